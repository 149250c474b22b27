"""sae_bench: does a sparse autoencoder still work when spliced into a model it was not trained on?"""
