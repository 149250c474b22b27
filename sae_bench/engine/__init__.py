"""The measuring engine: metrics, one evaluation pass, splicing, model backends; knows nothing of cases."""
