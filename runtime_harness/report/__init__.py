"""Profiling results and how they are shown: results.py (the typed results.json), console.py and
compare.py (the tables `dcl profile` prints), html.py with svg.py and templates/ (report.html),
labels.py (number cells and format names/colours they share)."""
