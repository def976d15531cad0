"""The XGBoost inference handler: model_fn / input_fn / predict_fn / output_fn."""
