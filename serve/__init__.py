"""The xgboost-mme inference server: SageMaker's multi-model container contract over an LRU of models."""
