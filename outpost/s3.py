"""The S3 client every service builds from :class:`outpost.settings.S3Settings`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from botocore.config import Config as BotoConfig

from outpost.settings import S3Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def client(settings: S3Settings, *, connect_timeout: float, read_timeout: float) -> S3Client:
    """SigV4 with path-style addressing (works with AWS and S3-compatible servers)."""
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key.get_secret_value(),
        config=BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        ),
    )
