"""What a run leaves behind: the JSON report and its text summary, the HTML page and its
heatmaps, CI formats, and the bug zoo's kill matrix."""
