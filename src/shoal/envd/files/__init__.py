"""envd's ``/files`` HTTP endpoint (e2b-compat §4.4, §4.5): downloads, multipart and
octet-stream uploads, file metadata and signed URLs.

    routes.files          the endpoint (auth → user → path → transfer)
    signature             v1 signatures, the token-or-signature check, header-less routing
    download / upload     the two transfers, streamed through worker threads
    metadata              X-Metadata-* headers ⇄ user.e2b.* xattrs
    transfer              shared: step runner that never closes an fd under a thread, errors
"""

from shoal.envd.files.routes import files

__all__ = ["files"]
