"""CLIMB clustering: quality raters, faiss k-means, assignment, prune + merge."""
