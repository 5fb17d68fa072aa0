"""s3proxy, the archive tier's S3 server: a filesystem-backed bucket behind AWS v2/v4 auth."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tierstore.layout import S3_ACCESS_KEY, S3_BUCKET, S3_REGION, S3_SECRET_KEY
from tierstore.services.base import Service
from tierstore.services.support import cache_dir, file_lock, java_major, mvn_copy, port_in_use, say, write_properties
from tierstore.services.trino import trino_java_home

S3PROXY_VERSION = "2.6.0"
S3PROXY_MIN_JAVA = 17


class S3ProxyService(Service):
    name = "s3"
    ready_timeout = 60.0

    @property
    def port(self) -> int:
        return self.layout.s3_port

    @property
    def data_dir(self) -> Path:
        return self.layout.home / "s3"

    @property
    def conf_file(self) -> Path:
        return self.layout.home / "etc" / "s3proxy.properties"

    @property
    def jar(self) -> Path:
        return cache_dir() / f"s3proxy-{S3PROXY_VERSION}" / f"s3proxy-{S3PROXY_VERSION}-jar-with-dependencies.jar"

    def marker(self) -> str:
        return str(self.conf_file)

    def config_files(self) -> list[Path]:
        return [self.conf_file]

    def java(self) -> Path:
        system = shutil.which("java")
        if system and java_major(Path(system)) >= S3PROXY_MIN_JAVA:
            return Path(system)
        return trino_java_home(self.log_file) / "bin" / "java"

    def install(self) -> None:
        if self.jar.is_file():
            return
        with file_lock(cache_dir() / f"s3proxy-{S3PROXY_VERSION}.lock"):
            if self.jar.is_file():
                return
            say(f"s3: fetching s3proxy {S3PROXY_VERSION} (once per machine)")
            staging = self.jar.parent.with_name(self.jar.parent.name + ".staging")
            shutil.rmtree(staging, ignore_errors=True)
            mvn_copy(f"org.gaul:s3proxy:{S3PROXY_VERSION}:jar:jar-with-dependencies", staging, self.log_file)
            shutil.rmtree(self.jar.parent, ignore_errors=True)
            staging.rename(self.jar.parent)

    def configure(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_file.parent.mkdir(parents=True, exist_ok=True)
        write_properties(
            self.conf_file,
            {
                "s3proxy.endpoint": self.layout.s3_endpoint,
                "s3proxy.authorization": "aws-v2-or-v4",
                "s3proxy.identity": S3_ACCESS_KEY,
                "s3proxy.credential": S3_SECRET_KEY,
                # Trino's AWS SDK sends x-amz-optional-object-attributes on ListObjectsV2
                "s3proxy.ignore-unknown-headers": "true",
                "jclouds.provider": "filesystem",
                "jclouds.filesystem.basedir": str(self.data_dir),
            },
        )

    def launch(self, log) -> subprocess.Popen:
        return self.spawn(
            [str(self.java()), "-Xmx512m", "-jar", str(self.jar), "--properties", str(self.conf_file)],
            log,
            cwd=self.layout.home,
        )

    def client(self):
        from tiers.s3util import make_s3_client

        return make_s3_client(self.layout.s3_endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION)

    def probe(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        if not port_in_use(self.port):
            return False
        try:
            self.client().list_buckets()
            return True
        except (BotoCoreError, ClientError):
            return False

    def after_ready(self) -> None:
        client = self.client()
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if S3_BUCKET not in names:
            client.create_bucket(Bucket=S3_BUCKET)
            say(f"s3: created bucket {S3_BUCKET}")
