"""Node-side scripts, shipped in the wheel and uploaded as common resource files.
They run on Batch nodes with only the Python standard library (persist.py) or bash."""
