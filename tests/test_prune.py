"""Minitron importance + pruning: HF surgery on tiny random Llama / Mistral models, and the two stages on a run.

The surgery tests build 4-layer, 32-wide models in milliseconds; the stage test saves a random tiny Llama
as ``<run>/teacher/`` of a tokenized run mixed with the ``mix`` stage (no teacher training needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from climb_hpc.minitron.importance import compute_importance
from climb_hpc.minitron.prune import num_params, prune_model, save_pruned

VOCAB = 50


def tiny(arch: str = "llama", heads: int = 4, kv: int = 2, tied: bool = False, layers: int = 4, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    cls, conf = (LlamaForCausalLM, LlamaConfig) if arch == "llama" else (MistralForCausalLM, MistralConfig)
    config = conf(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv, head_dim=16, max_position_embeddings=64,
                  tie_word_embeddings=tied, use_cache=False)
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    with torch.no_grad():  # norms away from 1 so that channel slicing is exercised
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return model.eval()


def batches(n: int = 4, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (4, 17), generator=g) for _ in range(n)]


IDS = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(7))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_pruning_to_the_original_sizes_is_the_identity():
    model = tiny()
    imp = compute_importance(model, batches(), drop=1)
    same = prune_model(model, imp, {})
    assert torch.equal(logits(same), logits(model))
    full = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
    assert torch.allclose(logits(prune_model(model, imp, full)), logits(model), atol=1e-6)


def test_importance_shapes_and_depth_losses():
    model = tiny()
    imp = compute_importance(model, batches(), drop=2)
    assert imp["mlp"].shape == (4, 64) and imp["heads"].shape == (4, 4) and imp["kv_groups"].shape == (4, 2)
    assert imp["channels"].shape == (32,) and imp["block"].shape == (4,) and imp["depth_loss"].shape == (3,)
    assert (imp["block"] >= 0).all() and imp["base_loss"] > 0


def test_pruned_checkpoint_reloads_with_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny()
    imp = compute_importance(model, batches(), drop=1)
    pruned = prune_model(model, imp, {"hidden_size": 24, "intermediate_size": 40, "num_attention_heads": 2,
                                      "depth": {"drop": 1, "metric": "block"}})
    assert pruned.config.num_hidden_layers == 3 and num_params(pruned) < num_params(model)
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]
    save_pruned(pruned, tmp_path / "p")
    conf = json.loads((tmp_path / "p" / "config.json").read_text())
    assert conf["head_dim"] == 16 and conf["hidden_size"] == 24 and conf["num_attention_heads"] == 2
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "p"), attn_implementation="sdpa").eval()
    assert torch.allclose(logits(again), logits(pruned), atol=1e-6)


def test_gqa_groups_stay_consistent():
    model = tiny(heads=8, kv=2)
    imp = compute_importance(model, batches(), drop=1)
    imp["heads"][0] = torch.tensor([1.0, 9, 8, 7, 6, 5, 4, 3])  # group 0: heads 0-3, group 1: heads 4-7
    pruned = prune_model(model, imp, {"num_attention_heads": 4})
    info = pruned.pruned_info
    assert info["kv_groups"][0] == [0, 1] and info["heads"][0] == [1, 2, 4, 5]  # 2 best heads of each group
    assert all(len(h) == 4 and [x // 4 for x in h] == [0, 0, 1, 1] for h in info["heads"].values())
    assert pruned.config.num_key_value_heads == 2 and pruned.model.layers[0].self_attn.q_proj.out_features == 64
    one = prune_model(model, imp, {"num_attention_heads": 2, "num_key_value_heads": 1})
    assert one.config.num_key_value_heads == 1 and one.model.layers[0].self_attn.k_proj.out_features == 16
    logits(one)
    with pytest.raises(ValueError, match="same number of query heads"):
        prune_model(model, imp, {"num_attention_heads": 3})


def test_tied_embeddings_stay_tied_after_pruning_and_reloading(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny(tied=True)
    imp = compute_importance(model, batches(), drop=1)
    pruned = prune_model(model, imp, {"hidden_size": 16})
    assert pruned.lm_head.weight.data_ptr() == pruned.model.embed_tokens.weight.data_ptr()
    save_pruned(pruned, tmp_path / "t")
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "t"))
    assert again.config.tie_word_embeddings
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()
    assert torch.allclose(logits(again.eval()), logits(pruned), atol=1e-6)


def test_mistral_prunes_by_width_and_depth(tmp_path):
    from transformers import AutoModelForCausalLM, MistralForCausalLM

    model = tiny("mistral")
    imp = compute_importance(model, batches(), drop=2)
    pruned = prune_model(model, imp, {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                                      "depth": {"drop": 2, "metric": "loss"}})
    assert isinstance(pruned, MistralForCausalLM) and pruned.config.num_hidden_layers == 2
    best = int(torch.argmin(imp["depth_loss"]))
    assert pruned.pruned_info["dropped_layers"] == [best, best + 1]
    save_pruned(pruned, tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).eval()
    assert isinstance(again, MistralForCausalLM) and torch.allclose(logits(again), logits(pruned), atol=1e-6)


def test_planted_dead_neuron_and_head_rank_last():
    model = tiny()
    with torch.no_grad():
        mlp = model.model.layers[1].mlp
        mlp.up_proj.weight[5].zero_()
        mlp.gate_proj.weight[5].zero_()
        mlp.down_proj.weight[:, 5].zero_()
        model.model.layers[2].self_attn.o_proj.weight[:, 3 * 16:4 * 16].zero_()  # head 3's o_proj input columns
    imp = compute_importance(model, batches(), drop=1)
    assert int(imp["mlp"][1].argmin()) == 5 and float(imp["mlp"][1][5]) == 0.0
    assert int(imp["heads"][2].argmin()) == 3 and float(imp["heads"][2][3]) == 0.0
    pruned = prune_model(model, imp, {"intermediate_size": 63, "num_attention_heads": 2})
    assert 5 not in pruned.pruned_info["neurons"][1]
    assert 3 not in pruned.pruned_info["heads"][2] and pruned.pruned_info["kv_groups"][2] == [0, 1]


def test_depth_pruning_removes_the_planted_identity_layer_first():
    model = tiny()
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    imp = compute_importance(model, batches(), drop=1)
    assert int(imp["block"].argmin()) == 2 and float(imp["block"][2]) < 1e-6
    pruned = prune_model(model, imp, {"depth": {"drop": 1, "metric": "block"}})
    assert pruned.pruned_info["dropped_layers"] == [2]
    assert torch.allclose(logits(pruned), logits(model), atol=1e-5)  # removing an identity changes nothing


# ---------------------------------------------------------------- the stages on a run


def test_importance_then_prune_stages_write_a_loadable_student(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from climb_hpc.minitron.correct import tokenizer_info
    from climb_hpc.pipeline import run_pipeline
    from climb_hpc.proxy.model import build_model
    from climb_hpc.rundir import RunDir, read_json
    from tests.conftest import SMALL_PROXY, TOKENIZED, clone_run, make_cfg, tokenized_run

    base = tmp_path_factory.mktemp("prune")
    tokenized_run(base / "tok")
    run = base / "run"
    over = ("cluster=debug", "pipeline.stages=[ingest,refine,tokenize,mix,importance,prune]", "until=mix",
            "mix.weights={0: 0.5, 2: 0.5}", "mix.tokens=20000",
            "minitron.importance.samples=32", "minitron.importance.seq_len=32", "minitron.importance.batch_size=8",
            "minitron.importance.cpus=1", "minitron.prune.cpus=1", "minitron.prune.hidden_size=48",
            "minitron.prune.intermediate_size=96", "minitron.prune.num_attention_heads=2",
            "minitron.prune.depth.drop=1", "minitron.prune.depth.metric=loss",
            f"minitron.importance.model={run / 'teacher'}")  # a teacher written below, in place of correct's
    cfg = clone_run(base / "tok", run, *over)
    run_pipeline(cfg)
    info = tokenizer_info(RunDir(run))
    dims = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16}
    teacher = build_model(dims, info["vocab_size"], info["eos_id"], 64, seed=3)
    save_pruned(teacher, run / "teacher", Path(run / "tokenize" / "tokenizer"))
    cfg = make_cfg(run, *TOKENIZED, *SMALL_PROXY, *[o for o in over if not o.startswith("until=")])
    RunDir(run).save_config(cfg)
    run_pipeline(cfg)
    imp = torch.load(run / "importance" / "importance.pt", weights_only=False)
    assert imp["heads"].shape == (3, 4) and imp["depth_loss"].shape == (3,)
    assert read_json(run / "importance" / "summary.json")["layers"] == 3
    s = read_json(run / "prune" / "summary.json")
    assert s["after"]["hidden_size"] == 48 and s["after"]["num_hidden_layers"] == 2 and s["after"]["head_dim"] == 16
    assert s["kept"]["dropped_layers"] == [int(imp["depth_loss"].argmin())] and s["params"]["ratio"] < 1
    student = AutoModelForCausalLM.from_pretrained(str(run / "student_pruned"))
    assert student.config.num_attention_heads == 2 and student.config.num_key_value_heads == 2
    assert (run / "student_pruned" / "tokenizer.json").is_file()
    student(input_ids=torch.tensor([[1, 2, 3]]))


def test_mc_metric_ranks_blocks_and_prune_refuses_a_mismatched_drop():
    model = tiny()
    calls, second = [], model.model.layers[1]

    def mc(m) -> float:  # a stand-in accuracy: highest when the model has layer 1 removed
        calls.append(len(m.model.layers))
        return 1.0 if all(layer is not second for layer in m.model.layers) else 0.25

    imp = compute_importance(model, batches(1), drop=1, mc=mc)
    assert imp["depth_mc"].tolist() == [0.25, 1.0, 0.25, 0.25] and imp["base_mc"] == 0.25
    assert calls == [3, 3, 3, 3, 4] and len(model.model.layers) == 4  # layers restored after scoring
    assert prune_model(model, imp, {"depth": {"drop": 1, "metric": "mc"}}).pruned_info["dropped_layers"] == [1]
    with pytest.raises(ValueError, match="drop=1"):
        prune_model(model, imp, {"depth": {"drop": 2, "metric": "loss"}})
    with pytest.raises(ValueError, match="metric"):
        prune_model(model, imp, {"depth": {"drop": 1, "metric": "bogus"}})
