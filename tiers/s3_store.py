"""The archive's S3 objects: upload, verify, read and delete them (boto3, tiers.s3util).

Uploads send Content-MD5 (s3proxy checks it) and x-amz-checksum-sha256 (S3 checks it), large files
go multipart (a Content-MD5 per part); `verify` then HEADs an object: size, ETag (the server's
MD5, or MD5-of-part-MD5s for multipart), the SHA-256 we stored in its metadata and, where the
server keeps one, its SHA-256 checksum. With object_lock and a bucket that has Object Lock
enabled, objects are written in COMPLIANCE mode until the given instant.
"""
from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from tiers import parquet_layout as PL
from tiers.archive_manifest import ArchiveVerifyFailed, Manifest

MANIFEST_DIR = "_manifests"
MULTIPART_THRESHOLD = 16 * 1024 * 1024
MULTIPART_PART_SIZE = 8 * 1024 * 1024


class S3Path(PurePosixPath):
    """A POSIX path `/<bucket>/<key>` that prints as `s3://<bucket>/<key>` (the layout's `/` works)."""

    def __str__(self) -> str:
        return "s3:/" + super().__str__()


def versioned_key(key: str, version: str | None) -> str:
    """`key` with a rewrite's version before its extension (part-0.parquet -> part-0.v<version>.parquet);
    unchanged for None."""
    if not version:
        return key
    head, dot, ext = key.rpartition(".")
    return f"{head}.v{version}.{ext}" if dot and "/" not in ext else f"{key}.v{version}"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class ArchiveStore:
    """Uploads, verifies, reads and deletes the archive's objects (boto3, tiers.s3util)."""

    def __init__(self, client, bucket: str, prefix: str, *, object_lock: bool = False,
                 multipart_threshold: int = MULTIPART_THRESHOLD, part_size: int = MULTIPART_PART_SIZE) -> None:
        self.s3 = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._lock_wanted = object_lock
        self._lock_enabled: bool | None = None

    @property
    def root(self) -> S3Path:
        """The objects' folder, s3://bucket/prefix (the root of their Parquet layout)."""
        return S3Path(f"/{self.bucket}/{self.prefix}")

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}"

    def manifest_key(self, m: Manifest) -> str:
        """The manifest object's key (versioned like its objects when m.key_version is set)."""
        column = "pack" if m.period == "pack" else PL.partition_column(PL.PERIODS[m.period])
        return versioned_key(self.key(f"{MANIFEST_DIR}/tenant={PL.escape(m.tenant)}/stream={PL.escape(m.stream)}/"
                                      f"{column}={m.name}.json"), m.key_version)

    # ---- object lock ---------------------------------------------------------------------------

    def object_lock_enabled(self) -> bool:
        """True when settings ask for Object Lock and the bucket has it enabled (asked once)."""
        if not self._lock_wanted:
            return False
        if self._lock_enabled is None:
            try:
                conf = self.s3.get_object_lock_configuration(Bucket=self.bucket)
                self._lock_enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
            except self.s3.exceptions.ClientError:
                self._lock_enabled = False
        return self._lock_enabled

    def _lock_args(self, retain_until: int | None) -> dict[str, Any]:
        if retain_until is None or not self.object_lock_enabled():
            return {}
        until = datetime.fromtimestamp(retain_until / 1000, tz=timezone.utc)
        return {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until}

    # ---- upload and verify ---------------------------------------------------------------------

    def put_file(self, path: Path, key: str, *, retain_until: int | None = None) -> dict[str, Any]:
        """Upload a local file; returns {key, size, sha256, etag} (etag as S3 computes it)."""
        size = path.stat().st_size
        if size <= self.multipart_threshold:
            data = path.read_bytes()
            return self.put_bytes(data, key, retain_until=retain_until)
        return self._put_multipart(path, key, size, retain_until)

    def put_bytes(self, data: bytes, key: str, *, retain_until: int | None = None,
                  content_type: str = "application/octet-stream") -> dict[str, Any]:
        sha = hashlib.sha256(data)
        md5 = hashlib.md5(data)
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=_b64(md5.digest()),
                           ChecksumSHA256=_b64(sha.digest()), Metadata={"sha256": sha.hexdigest()},
                           ContentType=content_type, **self._lock_args(retain_until))
        return {"key": key, "size": len(data), "sha256": sha.hexdigest(), "etag": md5.hexdigest()}

    def _put_multipart(self, path: Path, key: str, size: int, retain_until: int | None) -> dict[str, Any]:
        sha = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
        upload = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata={"sha256": sha.hexdigest()},
                                                 **self._lock_args(retain_until))
        parts, digests = [], []
        try:
            with path.open("rb") as f:
                for number, chunk in enumerate(iter(lambda: f.read(self.part_size), b""), start=1):
                    md5 = hashlib.md5(chunk).digest()
                    r = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"],
                                            PartNumber=number, Body=chunk, ContentMD5=_b64(md5))
                    parts.append({"PartNumber": number, "ETag": r["ETag"]})
                    digests.append(md5)
            self.s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"],
                                              MultipartUpload={"Parts": parts})
        except BaseException:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])
            raise
        etag = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
        return {"key": key, "size": size, "sha256": sha.hexdigest(), "etag": etag}

    def verify(self, obj: dict[str, Any]) -> None:
        """HEAD the object: size, ETag, stored SHA-256 (and the server's checksum if it keeps one)."""
        head = self.s3.head_object(Bucket=self.bucket, Key=obj["key"], ChecksumMode="ENABLED")
        problems = []
        if head["ContentLength"] != obj["size"]:
            problems.append(f"size {head['ContentLength']} != {obj['size']}")
        if head.get("ETag", "").strip('"') != obj["etag"]:
            problems.append(f"ETag {head.get('ETag')} != {obj['etag']}")
        if head.get("Metadata", {}).get("sha256") != obj["sha256"]:
            problems.append("stored sha256 differs")
        server_sha = head.get("ChecksumSHA256")
        if server_sha and "-" not in server_sha and server_sha != _b64(bytes.fromhex(obj["sha256"])):
            problems.append("server checksum differs")
        if problems:
            raise ArchiveVerifyFailed(f"s3://{self.bucket}/{obj['key']}: " + "; ".join(problems))

    def get_bytes(self, key: str, sha256: str | None = None) -> bytes:
        """An object's bytes; with `sha256`, checked against it."""
        data = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ArchiveVerifyFailed(f"s3://{self.bucket}/{key}: content does not match its manifest's SHA-256")
        return data

    def delete(self, keys: Iterable[str]) -> int:
        keys = list(keys)
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            r = self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch],
                                                                   "Quiet": True})
            if r.get("Errors"):
                e = r["Errors"][0]
                raise OSError(f"S3 refused to delete {e.get('Key')}: {e.get('Code')} {e.get('Message')}")
        return len(keys)

    def list_objects(self, relative: str = "") -> Iterator[dict[str, Any]]:
        """Every object under prefix/relative, in key order: boto3's ListObjectsV2 entries ("Key",
        "LastModified", "Size", ...). Pages by StartAfter (the last key of the previous page), not by
        continuation token: s3proxy hands back a URL-encoded token for keys holding '=' (every
        Hive path) and then repeats the same page."""
        start = None
        while True:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.key(relative), "MaxKeys": 1000}
            if start is not None:
                kw["StartAfter"] = start
            page = self.s3.list_objects_v2(**kw)
            contents = page.get("Contents") or []
            yield from contents
            if not page.get("IsTruncated") or not contents:
                return
            start = contents[-1]["Key"]

    def folders(self) -> list[str]:
        """The top-level folders under the prefix, relative to it ("events/", "_manifests/", ...)."""
        page = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.key(""), Delimiter="/")
        cut = len(self.key(""))
        return [p["Prefix"][cut:] for p in page.get("CommonPrefixes") or []]

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except self.s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def health(self) -> None:
        self.s3.head_bucket(Bucket=self.bucket)



__all__ = ["ArchiveStore", "S3Path", "MULTIPART_THRESHOLD"]
