"""Frames worth labelling, sampled on the line and uploaded to the cloud's sample inbox
(issue 11 item 3; docs/datasets.md "The appliance side"): `sampler.py` (the pure
active-learning budget), `operator.py` (operator-labelled frames), `queue.py` (the
bounded store-backed queue and JPEG spool), `client.py` (one HTTPS upload and what its
answer means), `service.py` (`Uploads`: the verdict listener and the two threads)."""

from appliance.uploads.config import SharesConfig, UploadsConfig

__all__ = ["SharesConfig", "UploadsConfig"]
