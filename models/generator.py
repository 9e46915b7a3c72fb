"""Progressive generator conditioned on the identity and expression codes.

ProGAN-style growth (4x4 upwards, one block per doubling, a toRGB at every resolution, fade-in of a
new block) with the code ``w = [w_id, w_exp]`` injected StyleALAE-like by AdaIN after every conv, so
both codes steer the image at every scale. The 4x4 start is a linear projection of the code (rather
than a learned constant) so the coarse layout can depend on the code too.

With ``edit_mask`` (GANimation, Pumarola et al. 2018) every resolution also emits a one-channel mask
logit beside its RGB, faded in the same way. Given the source photo, a render is then
``m * rgb + (1 - m) * source`` with ``m = sigmoid(logit)``: what the expression does not change (hair,
glasses, background, noise) is the source's own pixels, and the generator spends its capacity on the
regions it must redraw. Without a source (novel identities) the plain RGB is the render.

With ``photo_skips`` the generator is also a U-Net over the source photo (pix2pix, GANimation): a
down path reads the photo with the *target* expression code tiled over it as extra channels, so the
target steers from the first layer, and hands its features to the up path at every resolution below
the output's (the skips). The photo's layout, hair and light then reach the render directly instead
of squeezing through the identity code, and the codes (AdaIN) say what to redraw. Without a source
(novel identities) the skips are zeros and the codes alone draw the face.

Output has no final activation (as in ProGAN): tanh saturates and slows early training; images are
nominally in [-1, 1] and clamping for rendering is the pipeline's job. No per-pixel noise is added,
so the same codes always render the same image (the pipeline relies on determinism).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import (
    AdaIN,
    DownBlock,
    EqualConv2d,
    EqualLinear,
    check_alpha,
    check_resolution,
    pixel_norm,
    progressive_channels,
    progressive_resolutions,
)


class _StyledConv(nn.Module):
    """conv3x3 -> LeakyReLU(0.2) -> AdaIN(w)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = EqualConv2d(in_channels, out_channels, 3, padding=1)
        self.adain = AdaIN(out_channels, w_dim)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return self.adain(F.leaky_relu(self.conv(x), 0.2), w)


def _with_skip(x: Tensor, skip: Tensor | None, skip_channels: int) -> Tensor:
    """``x`` with the photo path's features appended as channels (zeros when there is no photo)."""
    if skip_channels == 0:
        return x
    if skip is None:
        skip = x.new_zeros(x.shape[0], skip_channels, *x.shape[-2:])
    return torch.cat([x, skip.to(x.dtype)], dim=1)


class _InputBlock(nn.Module):
    """Code -> 4x4 feature map: linear projection, LeakyReLU, AdaIN, then one styled conv3x3."""

    def __init__(self, channels: int, w_dim: int, skip_channels: int = 0) -> None:
        super().__init__()
        self.channels = channels
        self.skip_channels = skip_channels
        # ProGAN's gain for the dense 4x4 projection: sqrt(2)/4, i.e. He gain spread over 16 pixels.
        self.project = EqualLinear(w_dim, channels * 16, gain=2**0.5 / 4)
        self.adain = AdaIN(channels, w_dim)
        self.conv = _StyledConv(channels + skip_channels, channels, w_dim)

    def forward(self, w: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.project(w).view(w.shape[0], self.channels, 4, 4)
        x = self.adain(F.leaky_relu(x, 0.2), w)
        return self.conv(_with_skip(x, skip, self.skip_channels), w)


class _UpBlock(nn.Module):
    """Nearest 2x upsample, the photo path's features at the new size (if any), one or two styled conv3x3."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, skip_channels: int = 0, second_conv: bool = True
    ) -> None:
        super().__init__()
        self.skip_channels = skip_channels
        self.conv1 = _StyledConv(in_channels + skip_channels, out_channels, w_dim)
        self.conv2 = _StyledConv(out_channels, out_channels, w_dim) if second_conv else None

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.conv1(_with_skip(F.interpolate(x, scale_factor=2, mode="nearest"), skip, self.skip_channels), w)
        return x if self.conv2 is None else self.conv2(x, w)


class _StridedDown(nn.Module):
    """One stride-2 conv3x3 -> LReLU: a step down at a quarter of `DownBlock`'s cost (the editor's U-Net)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = EqualConv2d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(self.conv(x), 0.2)


class PhotoPath(nn.Module):
    """Source photo + target expression code -> features at every resolution below the output's.

    The code is tiled over the photo as ``exp_dim`` constant channels, so the first layer already
    knows what the photo must become. Like ProGAN's discriminator it reads the photo through a 1x1
    ``fromRGB`` at the stage's resolution and steps down to 4x4; while a new resolution fades in,
    the path below it reads the half-size photo through the previous ``fromRGB`` (blended by alpha)
    and the newest skip is scaled by alpha, so at alpha = 0 the generator is the previous stage's.
    """

    def __init__(self, chans: list[int], exp_dim: int, strided: bool = False) -> None:
        super().__init__()
        self.from_rgb = nn.ModuleList(EqualConv2d(3 + exp_dim, c, 1) for c in chans)
        # down[i] takes resolutions[i + 1] features to resolutions[i].
        step = _StridedDown if strided else DownBlock
        self.down = nn.ModuleList(step(chans[i + 1], chans[i]) for i in range(len(chans) - 1))

    def _read(self, photo: Tensor, w_exp: Tensor, level: int) -> Tensor:
        code = w_exp[:, :, None, None].to(photo.dtype).expand(-1, -1, *photo.shape[-2:])
        return F.leaky_relu(self.from_rgb[level](torch.cat([photo, code], dim=1)), 0.2)

    def forward(self, photo: Tensor, w_exp: Tensor, stage: int, alpha: float) -> list[Tensor]:
        """Skips for resolutions[0 .. stage - 1] (none at stage 0: 4x4 output has nothing below it)."""
        skips: list[Tensor] = [photo] * stage
        h = self._read(photo, w_exp, stage)
        for level in range(stage - 1, -1, -1):
            h = self.down[level](h)
            if level == stage - 1 and alpha < 1.0:
                h = torch.lerp(self._read(F.avg_pool2d(photo, 2), w_exp, level), h, alpha)
                skips[level] = h * alpha
            else:
                skips[level] = h
        return skips


def _area(source: Tensor, side: int) -> Tensor:
    """A larger source photo area-downsampled to ``side`` (a stage below full size), as training data is."""
    return F.adaptive_avg_pool2d(source, side) if source.shape[-1] != side else source


def _fit(source: Tensor, rgb: Tensor) -> Tensor:
    """The source photo at the render's side."""
    return _area(source, rgb.shape[-1])


def composite(rgb: Tensor, mask_logit: Tensor, source: Tensor) -> Tensor:
    """``sigmoid(mask) * rgb + (1 - sigmoid(mask)) * source``; a larger source is area-downsampled to fit."""
    # Under mixed precision rgb is in the autocast dtype while the photo stays float32.
    return torch.lerp(_fit(source, rgb).to(rgb.dtype), rgb, torch.sigmoid(mask_logit).to(rgb.dtype))


def difference_mask(
    rgb: Tensor, rgb_source_expression: Tensor, low: float = 0.1, high: float = 0.25, dilation: int = 2
) -> Tensor:
    """(N, 1, H, W) in [0, 1]: where a render for the target expression differs from the render of
    the same identity code with the source photo's own expression code.

    The per-pixel largest channel difference ramps from 0 at ``low`` to 1 at ``high`` (images in
    [-1, 1]), is dilated by ``dilation`` pixels so that the edges of a mouth or brow are redrawn
    too, and is softened by a 3x3 mean so that the seam does not show. The generator's learned mask
    cannot know this: it sees only the codes, not which expression the photo has, so it settles on
    a blend wherever an expression *might* change.
    """
    diff = (rgb - rgb_source_expression).abs().amax(1, keepdim=True)
    m = ((diff - low) / (high - low)).clamp(0, 1)
    if dilation > 0:
        m = F.max_pool2d(m, 2 * dilation + 1, stride=1, padding=dilation)
    return F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)


class Generator(nn.Module):
    """(w_id, w_exp) -> image at any supported resolution, with ProGAN fade-in.

    Args:
        id_dim, exp_dim: sizes of the two codes (concatenated into the conditioning vector).
        max_resolution: largest output size (power of two >= 4); resolutions are 4..max_resolution.
        channels: feature channels up to 16x16; halved per doubling above that.
        min_channels: floor for the halving.
        edit_mask: also emit a mask per resolution, so a render can be composited over its source.
        photo_skips: read the source photo through a down path (`PhotoPath`) into every resolution.
        lean: one styled conv per doubling and a strided photo path, about the editor U-Net's cost per step.
        code_norm: put each code on its sphere (norm sqrt(dim), StyleGAN's PixelNorm) before it steers.
    """

    def __init__(
        self,
        id_dim: int = 128,
        exp_dim: int = 32,
        max_resolution: int = 64,
        channels: int = 256,
        min_channels: int = 32,
        edit_mask: bool = False,
        photo_skips: bool = False,
        lean: bool = False,
        code_norm: bool = False,
    ) -> None:
        super().__init__()
        self.code_norm = code_norm
        self.id_dim = id_dim
        self.exp_dim = exp_dim
        self.max_resolution = max_resolution
        self._resolutions = progressive_resolutions(max_resolution)
        w_dim = id_dim + exp_dim
        chans = [progressive_channels(r, channels, min_channels) for r in self._resolutions]
        self.channels = chans
        skip = chans if photo_skips else [0] * len(chans)
        self.photo_path = PhotoPath(chans, exp_dim, strided=lean) if photo_skips else None
        self.input = _InputBlock(chans[0], w_dim, skip[0])
        # blocks[i] takes resolutions[i] features to resolutions[i + 1].
        self.blocks = nn.ModuleList(
            _UpBlock(chans[i], chans[i + 1], w_dim, skip[i + 1], second_conv=not lean) for i in range(len(chans) - 1)
        )
        # Images come out of a linear 1x1 conv (gain 1, ProGAN's toRGB).
        self.to_rgb = nn.ModuleList(EqualConv2d(c, 3, 1, gain=1.0) for c in chans)
        # Mask logits start at 0 (an even blend) and, like toRGB, come out of a linear 1x1 conv.
        self.to_mask = nn.ModuleList(EqualConv2d(c, 1, 1, gain=1.0) for c in chans) if edit_mask else None

    @property
    def resolutions(self) -> list[int]:
        """Supported output resolutions, ascending (4, 8, ..., max_resolution)."""
        return list(self._resolutions)

    @property
    def has_mask(self) -> bool:
        return self.to_mask is not None

    @property
    def reads_photo(self) -> bool:
        """Whether the source photo feeds the network itself (photo_skips), not only the composite."""
        return self.photo_path is not None

    def forward(
        self,
        w_id: Tensor,
        w_exp: Tensor,
        resolution: int,
        alpha: float = 1.0,
        source: Tensor | None = None,
        with_parts: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor | None]:
        """Render (N, 3, resolution, resolution) images.

        With ``alpha < 1`` the newest block is faded in:
        ``lerp(upsample(toRGB_prev(features_prev)), toRGB_cur(features_cur), alpha)``; at alpha=0 the
        output equals the previous resolution's output, nearest-upsampled, exactly. With an edit mask
        and a ``source`` (N, 3, H, W) the render is composited over the source; otherwise it is the RGB.
        ``with_parts`` returns ``(render, rgb, mask_logit or None)`` (training reads all three; one call,
        so DistributedDataParallel sees one forward).
        """
        rgb, mask = self.forward_parts(w_id, w_exp, resolution, alpha, source)
        render = rgb if mask is None or source is None else composite(rgb, mask, source)
        return (render, rgb, mask) if with_parts else render

    def edit(
        self, w_id: Tensor, w_exp: Tensor, w_exp_source: Tensor, source: Tensor, resolution: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Redraw a photo with another expression: ``(render, rgb, mask)``.

        ``source`` (N, 3, H, W) is the photo, ``w_exp_source`` its own expression code (the encoder's)
        and ``w_id`` its identity code. The RGB for ``w_exp`` replaces the photo where it differs
        from the RGB for ``w_exp_source`` (:func:`difference_mask`); elsewhere the photo's own
        pixels stay. Works with any generator, with or without a learned mask (which is not used).
        """
        photo = torch.cat([source, source]) if self.reads_photo else None
        both, _ = self.forward_parts(torch.cat([w_id, w_id]), torch.cat([w_exp, w_exp_source]), resolution, photo=photo)
        rgb, rgb_src = both.chunk(2)
        mask = difference_mask(rgb, rgb_src)
        return torch.lerp(_fit(source, rgb), rgb, mask), rgb, mask

    def forward_parts(
        self, w_id: Tensor, w_exp: Tensor, resolution: int, alpha: float = 1.0, photo: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(RGB, mask logit or None): the two outputs before compositing (training needs both).

        ``photo`` (N, 3, H, W) feeds the photo path when the generator has one; it is ignored otherwise."""
        stage = check_resolution(resolution, self._resolutions)
        alpha = check_alpha(alpha)
        if w_id.dim() != 2 or w_id.shape[1] != self.id_dim:
            raise ValueError(f"w_id must be (N, {self.id_dim}), got shape {tuple(w_id.shape)}")
        if w_exp.dim() != 2 or w_exp.shape[1] != self.exp_dim or w_exp.shape[0] != w_id.shape[0]:
            raise ValueError(f"w_exp must be ({w_id.shape[0]}, {self.exp_dim}), got shape {tuple(w_exp.shape)}")
        if self.code_norm:
            # An encoder's raw codes swing every AdaIN scale per photo; unbounded, they shut the edit mask.
            w_id, w_exp = pixel_norm(w_id), pixel_norm(w_exp)
        w = torch.cat([w_id, w_exp], dim=1)
        skips: list[Tensor | None] = [None] * (stage + 1)
        if self.photo_path is not None and photo is not None:
            skips[:stage] = self.photo_path(_area(photo, resolution), w_exp, stage, alpha)
        x = self.input(w, skips[0])
        prev = x
        for i, block in enumerate(self.blocks[:stage]):
            prev = x
            x = block(x, w, skips[i + 1])
        heads = [self.to_rgb] if self.to_mask is None else [self.to_rgb, self.to_mask]
        outs = []
        for head in heads:
            out = head[stage](x)
            if stage > 0 and alpha < 1.0:
                skip = F.interpolate(head[stage - 1](prev), scale_factor=2, mode="nearest")
                out = torch.lerp(skip, out, alpha)
            outs.append(out)
        return outs[0], (outs[1] if len(outs) > 1 else None)
