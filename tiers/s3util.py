"""One way to build a boto3 S3 client that works against s3proxy and real S3 alike."""
from __future__ import annotations

import boto3
from botocore.config import Config


def make_s3_client(endpoint: str | None, access_key: str, secret_key: str, region: str = "us-east-1"):
    """An S3 client with SigV4 and path-style addressing.

    Checksums are computed and validated only when an operation requires them: newer botocore
    otherwise sends trailing CRC checksums (aws-chunked uploads) that s3proxy rejects.
    """
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=config,
    )
