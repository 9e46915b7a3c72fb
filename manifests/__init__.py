"""The data contracts: the labelled input table and the generated-dataset manifest."""
