"""Training the zoo: corpus, tokenizer, language models, SAEs, and the zoo card."""
