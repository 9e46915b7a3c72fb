"""Quality checks (identity, expression, SSIM/PSNR, FID/KID) and the gates that decide publishing.

Plain library code: no Prefect and no file I/O except `report`, so flows can call it per shard.
Heavy submodules (FaceNet, Inception) are imported on use, not here, to keep imports cheap.
"""

from __future__ import annotations
