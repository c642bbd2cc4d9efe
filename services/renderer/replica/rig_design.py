"""Designing a replica's rig from one set of face-mesh landmarks.

Displacements are specified in a face frame: origin between the iris centres (468, 473), ``u`` along
the inter-ocular axis (image right), ``v`` perpendicular to it (image down), unit = the inter-ocular
distance (IOD). Magnitudes therefore scale with the face. Signs: ``dv < 0`` moves up.

Bases (all 478 landmarks get a displacement; fall-offs keep them smooth):

* ``jaw_open``: the lower face rotates down about a hinge at eye level: the chin drops 0.42 IOD, the
  lower lip ~0.25; weight ramps in below the mouth-corner line (corners 61/291 follow 35 %).
* ``lip_round``: lips pulled towards the mouth centre (35 % of their offset), pushed forward, a small
  round opening. ``lip_stretch``: lips pulled outwards (22 %), thinner. ``lip_press``: the inner lips
  close the rest gap and the outer contours roll in.
* ``smile+`` / ``smile-``: mouth corners (61/291, 78/308) up-and-out / down, with a Gaussian fall-off
  (0.22 IOD) along the lips and a cheek raise (and a slight lower-lid squint) for the smile.
* ``brow_raise+`` / ``brow_raise-``: brow landmarks up 0.17 IOD / down 0.09 IOD and inwards; the skin
  around them follows with a 0.12 IOD fall-off, upper lids slightly.
* ``blink_left`` / ``blink_right`` (the subject's left eye = image right, MediaPipe 386/374; right =
  159/145): upper-lid landmarks travel 88 % of the way to their lower-lid partners, lower lids 12 %.
* ``gaze_x`` / ``gaze_y``: iris landmarks (468-477) shift 0.11 / 0.07 IOD.

Virtual rig points: copies of each upper-lid contour that follow every basis except that eye's blink;
they are the fixed top edge of the eyelid sheets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.renderer.replica import landmarks as L
from services.renderer.replica.format import BASIS_NAMES


@dataclass
class FaceFrame:
    origin: np.ndarray  # (2,)
    u: np.ndarray       # (2,) unit
    v: np.ndarray       # (2,) unit
    iod: float          # world units

    def local(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = xy[..., :2] - self.origin
        return d @ self.u / self.iod, d @ self.v / self.iod

    def vec(self, du, dv, dz=0.0) -> np.ndarray:
        du, dv, dz = np.broadcast_arrays(np.asarray(du, float), np.asarray(dv, float), np.asarray(dz, float))
        xy = self.iod * (du[..., None] * self.u + dv[..., None] * self.v)
        return np.concatenate([xy, (self.iod * dz)[..., None]], axis=-1)


def face_frame(lm: np.ndarray) -> FaceFrame:
    r, l_ = lm[468, :2], lm[473, :2]
    iod = float(np.linalg.norm(l_ - r))
    u = (l_ - r) / iod
    v = np.array([-u[1], u[0]])
    return FaceFrame(origin=(r + l_) / 2, u=u, v=v, iod=iod)


def _falloff(d2, sigma):
    """Gaussian fall-off with compact support (exactly 0 beyond 2.5 sigma), so bases stay local."""
    d = np.sqrt(d2)
    return np.exp(-d2 / (2 * sigma ** 2)) * np.clip(1 - (d / (2.5 * sigma)) ** 2, 0, 1) ** 2


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _idx(*groups) -> np.ndarray:
    return np.array(sorted({i for g in groups for i in g}), dtype=np.int64)


UPPER_LIP = _idx(L.LIP_OUTER_UPPER[1:-1], L.LIP_INNER_UPPER[1:-1])
LOWER_LIP = _idx(L.LIP_OUTER_LOWER[1:-1], L.LIP_INNER_LOWER[1:-1])
ALL_LIPS = _idx(L.LIP_OUTER_UPPER, L.LIP_OUTER_LOWER, L.LIP_INNER_UPPER, L.LIP_INNER_LOWER)
IRISES = _idx(L.RIGHT_IRIS, L.LEFT_IRIS)
BROWS = _idx(L.RIGHT_BROW, L.LEFT_BROW)
EYES = {  # blink basis name -> (upper contour, lower contour), both including corners
    "blink_right": (L.RIGHT_EYE_UPPER, L.RIGHT_EYE_LOWER),
    "blink_left": (L.LEFT_EYE_UPPER, L.LEFT_EYE_LOWER),
}
UPPER_LIDS = _idx(L.RIGHT_EYE_UPPER[1:-1], L.LEFT_EYE_UPPER[1:-1])
LOWER_LIDS = _idx(L.RIGHT_EYE_LOWER[1:-1], L.LEFT_EYE_LOWER[1:-1])
EYE_CORNERS = _idx((33, 133, 362, 263))


@dataclass
class RigDesign:
    points: np.ndarray       # (P,3) rest rig points (478 landmarks + virtual)
    bases: np.ndarray        # (B,P,3)
    frame: FaceFrame
    virtual: dict            # name -> list of rig point ids (the lid tops), plus their sources


def design_rig(lm: np.ndarray) -> RigDesign:
    """Rig points and displacement bases for rest landmarks ``lm`` (478,3) in world units."""
    lm = np.asarray(lm, dtype=np.float64)
    fr = face_frame(lm)
    lu, lv = fr.local(lm)
    n = len(lm)
    bases = {name: np.zeros((n, 3)) for name in BASIS_NAMES}
    mu = (lu[13] + lu[14]) / 2
    mv = (lv[13] + lv[14]) / 2
    half_w = max(abs(lu[291] - lu[61]) / 2, 0.2)
    v_corner = (lv[61] + lv[291]) / 2
    v_chin = max(lv[L.CHIN], v_corner + 0.3)

    # Mouth geometry helpers.
    r_mouth = np.sqrt(((lu - mu) / (half_w / 0.5)) ** 2 + ((lv - mv) * 1.3) ** 2)
    f_lips = _falloff(np.maximum(r_mouth - 0.5, 0) ** 2, 0.18)
    prof = np.clip(1 - ((lu - mu) / (half_w * 1.05)) ** 2, 0, 1)
    is_ = np.zeros(n, bool)

    def mask(ids):
        m = is_.copy()
        m[list(ids)] = True
        return m

    outer_up, outer_lo = mask(L.LIP_OUTER_UPPER[1:-1]), mask(L.LIP_OUTER_LOWER[1:-1])
    inner_up, inner_lo = mask(L.LIP_INNER_UPPER[1:-1]), mask(L.LIP_INNER_LOWER[1:-1])
    corners = mask(L.MOUTH_CORNERS)
    upper_lip, lower_lip = mask(UPPER_LIP), mask(LOWER_LIP)

    # -- jaw_open ------------------------------------------------------------------------------------
    m = _smoothstep((lv - v_corner + 0.05) / 0.4)
    m[upper_lip] = 0.0
    m[lower_lip] = 1.0
    m[corners] = 0.35
    m[lv < 0.2] = 0.0
    drop = 0.42 * np.clip(lv / v_chin, 0, 1.2)
    jaw = fr.vec(0.0, m * drop, m * drop * 0.15)
    jaw[upper_lip] += fr.vec(0.0, -0.02)
    bases["jaw_open"] = jaw

    # -- lip_round / lip_stretch / lip_press --------------------------------------------------------
    rnd = fr.vec(-0.35 * (lu - mu) * f_lips, 0.0, -0.08 * f_lips)
    rnd[inner_up] += fr.vec(0.0, -0.04 * prof[inner_up])
    rnd[inner_lo] += fr.vec(0.0, 0.07 * prof[inner_lo])
    rnd[outer_up] += fr.vec(0.0, -0.02 * prof[outer_up])
    rnd[outer_lo] += fr.vec(0.0, 0.03 * prof[outer_lo])
    bases["lip_round"] = rnd

    st = fr.vec(0.22 * (lu - mu) * f_lips, 0.0)
    st[outer_up] += fr.vec(0.0, 0.03 * prof[outer_up])
    st[outer_lo] += fr.vec(0.0, -0.03 * prof[outer_lo])
    st[inner_up] += fr.vec(0.0, 0.01 * prof[inner_up])
    st[inner_lo] += fr.vec(0.0, -0.01 * prof[inner_lo])
    bases["lip_stretch"] = st

    pr = np.zeros((n, 3))
    for up, lo in zip(L.LIP_INNER_UPPER[1:-1], L.LIP_INNER_LOWER[1:-1], strict=True):
        gap = lm[lo] - lm[up]
        pr[up] += 0.5 * gap
        pr[lo] -= 0.5 * gap
    pr[outer_up] += fr.vec(0.0, 0.04 * prof[outer_up])
    pr[outer_lo] += fr.vec(0.0, -0.05 * prof[outer_lo])
    pr[inner_up] += fr.vec(0.0, 0.01 * prof[inner_up])
    pr[inner_lo] += fr.vec(0.0, -0.01 * prof[inner_lo])
    bases["lip_press"] = pr

    # -- smile / frown ------------------------------------------------------------------------------
    for name, up_amt, out_amt, back in (("smile+", -0.14, 0.10, 0.03), ("smile-", 0.12, -0.03, 0.0)):
        b = np.zeros((n, 3))
        for c_out, c_in, side in ((61, 78, -1.0), (291, 308, 1.0)):
            cu, cv = (lu[c_out] + lu[c_in]) / 2, (lv[c_out] + lv[c_in]) / 2
            d2 = (lu - cu) ** 2 + (lv - cv) ** 2
            w = _falloff(d2, 0.22)
            w[lv < 0.25] = 0.0
            b += w[:, None] * fr.vec(side * out_amt, up_amt, back)
            if name == "smile+":
                # Cheek raise above and outside the corner.
                d2c = (lu - (cu + side * 0.12)) ** 2 + (lv - (cv - 0.35)) ** 2
                wc = _falloff(d2c, 0.25)
                wc[lv < 0.2] *= 0.3
                b += wc[:, None] * fr.vec(side * 0.01, -0.05)
        if name == "smile+":
            b[mask(LOWER_LIDS)] += fr.vec(0.0, -0.025)
        bases[name] = b

    # -- brows ------------------------------------------------------------------------------------------
    bu, bv = lu[BROWS], lv[BROWS]
    d2b = (lu[:, None] - bu[None]) ** 2 + (lv[:, None] - bv[None]) ** 2
    dmin = np.sqrt(d2b.min(axis=1))
    wb = _falloff(dmin ** 2, 0.12)
    wb[lv > 0.15] = 0.0                      # nothing below the eyes
    wb[mask(UPPER_LIDS)] = 0.15
    wb[mask(LOWER_LIDS) | mask(IRISES) | mask(EYE_CORNERS)] = 0.0
    wb[BROWS] = 1.0
    bases["brow_raise+"] = fr.vec(0.0, -0.17 * wb)
    inward = -np.sign(lu) * 0.05 * np.clip(1.2 - np.abs(lu) / 0.6, 0, 1)
    bases["brow_raise-"] = fr.vec(inward * wb, 0.09 * wb)

    # -- blinks ---------------------------------------------------------------------------------------------
    for name, (upper, lower) in EYES.items():
        b = np.zeros((n, 3))
        for up, lo in zip(upper[1:-1], lower[1:-1], strict=True):
            gap = lm[lo] - lm[up]
            b[up] = 0.88 * gap
            b[lo] = -0.12 * gap
        # Skin just above the upper lid follows part of the way.
        up_ids = np.array(upper[1:-1])
        eu, ev = lu[up_ids], lv[up_ids]
        d2 = (lu[:, None] - eu[None]) ** 2 + (lv[:, None] - ev[None]) ** 2
        near = d2.argmin(axis=1)
        w = 0.45 * _falloff(d2.min(axis=1), 0.07)
        above = lv < ev[near]
        w[~above] = 0.0
        w[up_ids] = 0.0
        w[_idx(lower, (33, 133, 362, 263))] = 0.0
        w[IRISES] = 0.0
        w[BROWS] = 0.0
        b += w[:, None] * b[up_ids[near]]
        bases[name] = b

    # -- gaze -----------------------------------------------------------------------------------------------
    gx, gy = np.zeros((n, 3)), np.zeros((n, 3))
    gx[IRISES] = fr.vec(0.11, 0.0)
    gy[IRISES] = fr.vec(0.0, -0.07)
    bases["gaze_x"], bases["gaze_y"] = gx, gy

    stacked = np.stack([bases[name] for name in BASIS_NAMES])  # (B, 478, 3)
    # Drop imperceptible tails (< 0.002 IOD) so each control touches a compact region.
    stacked[np.linalg.norm(stacked, axis=-1) < 0.002 * fr.iod] = 0.0

    # -- virtual points: upper-lid tops that ignore their eye's blink ----------------------------------------
    virtual: dict = {}
    extra_pts, extra_bases = [], []
    next_id = n
    for name, (upper, _lower) in EYES.items():
        ids = []
        for src in upper:
            vb = stacked[:, src].copy()
            vb[BASIS_NAMES.index(name)] = 0.0
            extra_pts.append(lm[src])
            extra_bases.append(vb)
            ids.append(next_id)
            next_id += 1
        virtual[f"lid_top_{name.split('_')[1]}"] = {"ids": ids, "source": list(upper)}
    points = np.concatenate([lm, np.array(extra_pts)])
    bases_all = np.concatenate([stacked, np.stack(extra_bases, axis=1)], axis=1)
    return RigDesign(points=points, bases=bases_all, frame=fr, virtual=virtual)
