"""Training-ready output: tokenization into Megatron-LM indexed datasets and tokenized Arrow."""
