"""Reports over a finished run: plots of the mixture search (``climb_hpc.report.search_plots``)."""
