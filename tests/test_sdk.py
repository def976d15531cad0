"""The notebook's other client: the SageMaker Python SDK's Predictor, on a session pointed at localhost."""

from __future__ import annotations

import os

import boto3
import pytest
from conftest import predict_artifact

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")


def test_predictor_with_target_model(start_server, tmp_path, artifact_bytes):
    import numpy as np
    import sagemaker
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import CSVSerializer

    (tmp_path / "Chicago_IL.tar.gz").write_bytes(artifact_bytes(3))
    server = start_server("--models", str(tmp_path))
    runtime = boto3.client("sagemaker-runtime", endpoint_url=server.url, region_name="us-east-1")
    session = sagemaker.Session(
        boto_session=boto3.Session(region_name="us-east-1"), sagemaker_runtime_client=runtime
    )
    predictor = Predictor(
        "local", sagemaker_session=session, serializer=CSVSerializer(), deserializer=JSONDeserializer()
    )
    row = [0.5, 0.25, 0.75, 0.1, 0.9, 0.3]
    got = predictor.predict(row, target_model="Chicago_IL.tar.gz")
    want = predict_artifact(artifact_bytes(3), np.array([row], dtype=np.float32))
    assert got == pytest.approx(want, rel=1e-6)
