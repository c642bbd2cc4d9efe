"""The WebRTC gateway: a browser talks face to face with the replica (see ``services/gateway/README.md``)."""
