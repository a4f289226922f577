"""Shared fixtures: real local services (S3 on 127.0.0.1, one Ray per session), test data paths."""
from tests.support.paths import *  # noqa: F401,F403
from tests.support.s3_server import *  # noqa: F401,F403
from tests.support.ray_cluster import *  # noqa: F401,F403
from tests.support.tiny_models import *  # noqa: F401,F403
