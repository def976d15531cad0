"""An XGBoost handler written the way AWS's bring-your-own-container multi-model example writes one.

Runs inside the baseline virtualenv (multi-model-server + sagemaker-inference), never in ours.
"""

import io
import os

import numpy as np
import xgboost as xgb
from sagemaker_inference import content_types, decoder, default_inference_handler, encoder


class XGBoostInferenceHandler(default_inference_handler.DefaultInferenceHandler):
    def default_model_fn(self, model_dir, context=None):
        booster = xgb.Booster()
        booster.load_model(os.path.join(model_dir, "xgboost-model"))
        return booster

    def default_input_fn(self, input_data, content_type, context=None):
        if content_type == content_types.CSV:
            # sagemaker_inference.decoder fails on the text MMS hands over for a one-row CSV body.
            text = input_data if isinstance(input_data, str) else bytes(input_data).decode()
            return np.loadtxt(io.StringIO(text), delimiter=",", ndmin=2, dtype=np.float32)
        return decoder.decode(input_data, content_type)

    def default_predict_fn(self, data, model, context=None):
        return model.predict(xgb.DMatrix(data))

    def default_output_fn(self, prediction, accept, context=None):
        return encoder.encode(prediction, accept)
