"""Reports over a run folder: ``report.html`` (``climb_hpc.report.build.write_report``, the ``report`` stage and
``climb-hpc report run_dir=DIR``) and the plots of the mixture search (``climb_hpc.report.search_plots``)."""
