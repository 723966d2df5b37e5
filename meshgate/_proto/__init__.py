"""Python code generated from proto/ at build time (see setup.py). Not edited by hand."""
