"""Per-location XGBoost house-price models, trained and packed as SageMaker artifacts."""
