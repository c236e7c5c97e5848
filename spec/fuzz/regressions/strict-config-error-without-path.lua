error("boom", 0)
