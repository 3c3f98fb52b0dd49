"""Model wrappers used by scoring stages (fastText, KenLM, served LMs)."""
