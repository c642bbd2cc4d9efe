"""What a still photo lacks (mouth interior, teeth, eyelids, sclera) and the binding of Gaussians to the
landmark rig."""

from __future__ import annotations

import numpy as np

from services.renderer.replica import landmarks as L
from services.renderer.replica.format import (
    BASIS_NAMES,
    K_BIND,
    KIND_EYEBALL,
    KIND_LID,
    KIND_MOUTH,
    KIND_TEETH,
    SHEET_KINDS,
)
from services.renderer.replica.geometry import contour_param, interp_contour_y, points_in_poly, poly_mask, sample
from services.renderer.replica.rig_design import EYES, IRISES, LOWER_LIDS, LOWER_LIP, UPPER_LIDS, UPPER_LIP


def sheet_cov(points: np.ndarray, ex: dict) -> np.ndarray:
    m = ex["sheet_mask"]
    q = points[ex["bind_idx"][m]]
    u, v = ex["sheet_uv"][m, 0:1], ex["sheet_uv"][m, 1:2]
    d_du = (1 - v) * (q[:, 1] - q[:, 0]) + v * (q[:, 3] - q[:, 2])
    d_dv = (1 - u) * (q[:, 2] - q[:, 0]) + u * (q[:, 3] - q[:, 1])
    a = d_du * ex["sheet_sigma"][m, 0:1]
    b = d_dv * ex["sheet_sigma"][m, 1:2]
    return a[:, :, None] * a[:, None, :] + b[:, :, None] * b[:, None, :] + np.eye(3) * 1e-9


def photo_extras(design, lm: np.ndarray, portrait: np.ndarray, R: int) -> dict:
    fr = design.frame
    pts = design.points
    img = portrait.astype(np.float32) / 255.0
    out: dict[str, list] = {k: [] for k in ("means", "log_scales", "quats", "opacities", "colors", "kind",
                                            "bind_idx", "bind_w", "sheet_uv", "sheet_sigma", "gate_basis",
                                            "gate_range", "rest_gate")}

    def add_sheet(top: list[int], bottom: list[int], nu: int, nv: int, v_range: tuple[float, float], kind: int,
                  color_fn, opacity: float, dz: float, gate: int = -1, gate_range=(0.0, 1.0)):
        for j in range(len(top) - 1):
            quad = [top[j], top[j + 1], bottom[j], bottom[j + 1]]
            for iu in range(nu):
                u = (iu + 0.5) / nu
                for iv in range(nv):
                    v = v_range[0] + (iv + 0.5) / nv * (v_range[1] - v_range[0])
                    w = np.array([(1 - u) * (1 - v), u * (1 - v), (1 - u) * v, u * v])
                    p = (w[:, None] * pts[quad]).sum(0)
                    p[2] += dz
                    out["means"].append(p)
                    out["log_scales"].append(np.log([1e-4, 1e-4, 1e-4]))
                    out["quats"].append([1.0, 0, 0, 0])
                    out["opacities"].append(opacity)
                    out["colors"].append(color_fn(j, u, v, p))
                    out["kind"].append(kind)
                    out["bind_idx"].append(quad)
                    out["bind_w"].append(w)
                    out["sheet_uv"].append([u, v])
                    out["sheet_sigma"].append([0.6 / nu, 0.6 * (v_range[1] - v_range[0]) / nv])
                    out["gate_basis"].append(gate)
                    out["gate_range"].append(gate_range)
                    out["rest_gate"].append(0.0 if gate >= 0 else 1.0)

    def add_blob(ids: list[int], weights: list[float], offset: np.ndarray, sigma_xy: tuple[float, float], kind: int,
                 color, opacity: float):
        base = sum(w * pts[i] for i, w in zip(ids, weights, strict=True))
        p = base + offset
        ids4 = (list(ids) + [ids[0]] * K_BIND)[:K_BIND]
        w4 = (list(weights) + [0.0] * K_BIND)[:K_BIND]
        out["means"].append(p)
        out["log_scales"].append(np.log([sigma_xy[0], sigma_xy[1], 0.5 * min(sigma_xy)]))
        out["quats"].append([1.0, 0, 0, 0])
        out["opacities"].append(opacity)
        out["colors"].append(color)
        out["kind"].append(kind)
        out["bind_idx"].append(ids4)
        out["bind_w"].append(w4)
        out["sheet_uv"].append([0.0, 0.0])
        out["sheet_sigma"].append([0.0, 0.0])
        out["gate_basis"].append(-1)
        out["gate_range"].append([0.0, 0.0])
        out["rest_gate"].append(1.0)

    iod = fr.iod
    up_in, lo_in = list(L.LIP_INNER_UPPER), list(L.LIP_INNER_LOWER)
    # Mouth interior: darker towards the middle.
    add_sheet(up_in, lo_in, 3, 5, (0.0, 1.0), KIND_MOUTH,
              lambda j, u, v, p: np.array([0.16, 0.05, 0.06]) * (0.55 + 0.45 * abs(2 * v - 1)),
              0.97, 0.08 * iod)
    # Teeth: a row just inside the upper lip, a fainter one above the lower lip (rigid with each lip).
    skin = np.median(img[face_rows(lm, R)], axis=0)
    teeth_col = np.clip(np.array([0.92, 0.90, 0.84]) * (0.75 + 0.25 * float(skin.mean())), 0, 1)
    tooth_w = 0.045 * iod
    for row, (contour, dv, opac, span) in enumerate(((up_in, 0.055, 0.9, (2, 9)), (lo_in, -0.035, 0.45, (3, 8)))):
        for j in range(span[0], span[1]):
            for frac in (0.25, 0.75):
                a, b = contour[j - 1], contour[j]
                off = fr.vec(0.0, dv, 0.05)
                add_blob([a, b], [1 - frac, frac], off, (tooth_w, 0.035 * iod if row == 0 else 0.025 * iod),
                         KIND_TEETH, teeth_col * (1.0 if row == 0 else 0.85), opac)
    # Eyelids and sclera.
    for name, (upper, lower) in EYES.items():
        side = name.split("_")[1]
        tops = design.virtual[f"lid_top_{side}"]["ids"]
        gate = BASIS_NAMES.index(name)
        up_pts = lm[list(upper)]
        above = up_pts[:, :2] + fr.vec(0.0, -0.09)[None, :2]
        lid_cols = np.array([sample(img, (a * R)[None])[0] for a in above])
        lid_cols = np.median(lid_cols, axis=0) * 0.5 + lid_cols * 0.5

        def lid_color(j, u, v, p, lid_cols=lid_cols):
            c = lid_cols[j] * (1 - u) + lid_cols[j + 1] * u
            shade = 1.0 - 0.12 * v
            if v > 0.8:
                shade *= 0.45  # lash line
            return np.clip(c * shade, 0, 1)

        add_sheet(tops, list(upper), 3, 5, (0.0, 1.0), KIND_LID, lid_color, 0.98, -0.04 * iod,
                  gate=gate, gate_range=(0.02, 0.2))
        eye_poly_px = np.concatenate([lm[list(upper), :2], lm[list(lower[::-1]), :2]]) * R
        m = poly_mask_px(eye_poly_px, R)
        vals = img[m] if m.any() else img.reshape(-1, 3)
        lum = vals.mean(1)
        sclera = np.clip(vals[lum >= np.quantile(lum, 0.8)].mean(0), 0, 1)
        add_sheet(list(upper), list(lower), 2, 3, (0.0, 1.0), KIND_EYEBALL, lambda j, u, v, p, c=sclera: c, 1.0,
                  0.06 * iod)
    res = {k: np.asarray(v) for k, v in out.items()}
    res["means"] = res["means"].astype(np.float64).reshape(-1, 3)
    res["sheet_mask"] = np.isin(res["kind"], SHEET_KINDS)
    # Sheets: stored scales/quats describe the rest shape (the rig recomputes it every frame).
    if res["sheet_mask"].any():
        cov = sheet_cov(pts, res)
        ev, evec = np.linalg.eigh(cov)
        ev = np.maximum(ev, 1e-10)
        rot = evec * np.sign(np.linalg.det(evec))[:, None, None]
        res["log_scales"][res["sheet_mask"]] = 0.5 * np.log(ev)
        res["quats"][res["sheet_mask"]] = rotmat_to_quat(rot)
    return res


def prepend_plain(ex: dict, plain: dict, kind: int) -> dict:
    """Extras with unbound-shape ("plain", not sheet, not gated) Gaussians ``plain`` put first."""
    n = len(plain["means"])
    out = dict(ex)
    for k in ("means", "log_scales", "quats", "opacities", "colors"):
        out[k] = np.concatenate([np.asarray(plain[k], dtype=np.float64).reshape(n, -1).squeeze(-1) if k == "opacities"
                                 else np.asarray(plain[k], dtype=np.float64), np.asarray(ex[k], dtype=np.float64)])
    out["kind"] = np.concatenate([np.full(n, kind), ex["kind"]])
    out["bind_idx"] = np.concatenate([np.zeros((n, K_BIND), np.int64), ex["bind_idx"]])
    out["bind_w"] = np.concatenate([np.zeros((n, K_BIND)), ex["bind_w"]])
    for k, width in (("sheet_uv", 2), ("sheet_sigma", 2), ("gate_range", 2)):
        out[k] = np.concatenate([np.zeros((n, width)), ex[k]])
    out["gate_basis"] = np.concatenate([np.full(n, -1), ex["gate_basis"]])
    out["rest_gate"] = np.concatenate([np.ones(n), ex["rest_gate"]])
    out["sheet_mask"] = np.concatenate([np.zeros(n, bool), ex["sheet_mask"]])
    return out


def face_rows(lm: np.ndarray, R: int) -> np.ndarray:
    """Mask of cheek pixels (below the eyes, beside the nose) to estimate skin brightness."""
    mask = np.zeros((R, R), bool)
    for idx in (50, 280, 101, 330):
        x, y = (lm[idx, :2] * R).astype(int)
        mask[max(y - 3, 0):y + 4, max(x - 3, 0):x + 4] = True
    return mask


def poly_mask_px(poly: np.ndarray, R: int) -> np.ndarray:
    return poly_mask(poly, R)


def rotmat_to_quat(r: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(r).as_quat()  # xyzw
    return np.c_[q[:, 3], q[:, :3]]


# ----------------------------------------------------------------------------------------------------------
# Binding
# ----------------------------------------------------------------------------------------------------------
def bind(means_px: np.ndarray, lm_px: np.ndarray, fr, R: int, mouth_poly: np.ndarray,
          eye_polys: dict[str, np.ndarray], split_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    n = len(means_px)
    idx = np.zeros((n, K_BIND), np.int64)
    w = np.zeros((n, K_BIND))
    done = np.zeros(n, bool)
    iod_px = fr.iod * R
    # Mouth opening: bind to the upper or lower inner lip (teeth move with their jaw).
    inside = points_in_poly(means_px, mouth_poly)
    if split_mask is not None:
        inside &= split_mask
    if inside.any():
        up = np.array(L.LIP_INNER_UPPER)
        lo = np.array(L.LIP_INNER_LOWER)
        q = means_px[inside]
        ju, su = contour_param(q[:, 0], lm_px[up, 0])
        jl, sl = contour_param(q[:, 0], lm_px[lo, 0])
        yu = lm_px[up[ju], 1] * (1 - su) + lm_px[up[ju + 1], 1] * su
        yl = lm_px[lo[jl], 1] * (1 - sl) + lm_px[lo[jl + 1], 1] * sl
        t = (q[:, 1] - yu) / np.maximum(yl - yu, 1e-6)
        use_up = t < 0.55
        ii = np.flatnonzero(inside)
        idx[ii[use_up], 0], idx[ii[use_up], 1] = up[ju[use_up]], up[ju[use_up] + 1]
        w[ii[use_up], 0], w[ii[use_up], 1] = 1 - su[use_up], su[use_up]
        idx[ii[~use_up], 0], idx[ii[~use_up], 1] = lo[jl[~use_up]], lo[jl[~use_up] + 1]
        w[ii[~use_up], 0], w[ii[~use_up], 1] = 1 - sl[~use_up], sl[~use_up]
        done |= inside
    # Eye openings: iris pixels follow the iris, the rest stays with the eye corners.
    for name, poly in eye_polys.items():
        inside = points_in_poly(means_px, poly) & ~done
        if split_mask is not None:
            inside &= split_mask
        if not inside.any():
            continue
        upper, _ = EYES[name]
        c = 468 if name == "blink_right" else 473
        ii = np.flatnonzero(inside)
        iris = np.linalg.norm(means_px[ii] - lm_px[c, :2], axis=1) < 0.12 * iod_px
        idx[ii[iris], 0] = c
        w[ii[iris], 0] = 1.0
        a, b = upper[0], upper[-1]
        xa, xb = lm_px[a, 0], lm_px[b, 0]
        s = np.clip((means_px[ii[~iris], 0] - xa) / (xb - xa), 0, 1)
        idx[ii[~iris], 0], idx[ii[~iris], 1] = a, b
        w[ii[~iris], 0], w[ii[~iris], 1] = 1 - s, s
        done |= inside
    # Skin: 4 nearest landmarks; near the lips and eyelids only those on the Gaussian's own side of the seam
    # (so the mouth and eyes can open without smearing skin across them). Coarse Gaussians are not split.
    rest = np.flatnonzero(~done)
    q = means_px[rest]
    seam_mouth = (lm_px[list(L.LIP_INNER_UPPER), :2] + lm_px[list(L.LIP_INNER_LOWER), :2]) / 2
    y_mouth = interp_contour_y(q[:, 0], seam_mouth)
    above_mouth = q[:, 1] < y_mouth
    near_mouth = (q[:, 0] > lm_px[61, 0] - 0.04 * iod_px) & (q[:, 0] < lm_px[291, 0] + 0.04 * iod_px)
    near_mouth &= np.abs(q[:, 1] - y_mouth) < 0.6 * iod_px
    above_eye = np.zeros(len(q), bool)
    near_eye = np.zeros(len(q), bool)
    for upper, lower in EYES.values():
        seam = (lm_px[list(upper), :2] + lm_px[list(lower), :2]) / 2
        y_eye = interp_contour_y(q[:, 0], seam)
        span = (q[:, 0] > seam[0, 0] - 0.03 * iod_px) & (q[:, 0] < seam[-1, 0] + 0.03 * iod_px)
        span &= np.abs(q[:, 1] - y_eye) < 0.4 * iod_px
        near_eye |= span
        above_eye |= span & (q[:, 1] < y_eye)
    if split_mask is not None:
        near_mouth &= split_mask[rest]
        near_eye &= split_mask[rest]
    # Side classes: 0 free, 1 above, 2 below.
    mouth_cls = np.where(near_mouth, np.where(above_mouth, 1, 2), 0)
    eye_cls = np.where(near_eye, np.where(above_eye, 1, 2), 0)
    for mc in (0, 1, 2):
        for ec in (0, 1, 2):
            sel = (mouth_cls == mc) & (eye_cls == ec)
            if not sel.any():
                continue
            excl = set(IRISES.tolist())
            if mc:
                excl |= set((LOWER_LIP if mc == 1 else UPPER_LIP).tolist())
            if ec:
                excl |= set((LOWER_LIDS if ec == 1 else UPPER_LIDS).tolist())
            cand = np.array([i for i in range(478) if i not in excl])
            cp = lm_px[cand, :2]
            qs = q[sel]
            ids_out = np.zeros((len(qs), K_BIND), np.int64)
            d_out = np.zeros((len(qs), K_BIND))
            for start in range(0, len(qs), 2048):
                blk = qs[start:start + 2048]
                d2 = ((blk[:, None, :] - cp[None]) ** 2).sum(-1)
                nn = np.argpartition(d2, K_BIND, axis=1)[:, :K_BIND]
                ids_out[start:start + 2048] = cand[nn]
                d_out[start:start + 2048] = np.sqrt(np.take_along_axis(d2, nn, 1))
            inv = 1.0 / (d_out ** 2 + (0.03 * iod_px) ** 2)
            ww = inv / inv.sum(1, keepdims=True)
            dmin = d_out.min(1) / iod_px
            atten = np.exp(-np.maximum(dmin - 0.03, 0) ** 2 / (2 * 0.08 ** 2))
            atten[dmin > 0.35] = 0.0
            rr = rest[sel]
            idx[rr] = ids_out
            w[rr] = ww * atten[:, None]
    w[w < 1e-4] = 0.0
    return idx, w

