"""The shipped zoo as the suite reads it: its recipes, its tokenizer and its verified artifacts."""
