"""`make bench`: xgboost-mme against multi-model-server + sagemaker-inference, same machine, same run."""
