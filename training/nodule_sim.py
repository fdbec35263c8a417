"""Simulated lung nodules: projected soft-tissue bodies added to films (or to DRR line integrals), shared by the
nodule detector (``train_nodules.py``) and the nodule-aware bone model (``train_bone.py --stage nodules``).

A nodule is a small 3-D body of soft-tissue density: a sphere, a lobulated union of 2-4 overlapping spheres, or a
part-solid nodule (a solid core inside a ground-glass ball of about a third of its density). Its projection is
the path length through it along the beam (the body is voxelised at 4 voxels per film pixel and summed along
one axis, so lobulation projects as it would), normalised to 1 at its thickest point. On a film the nodule adds
``amplitude * projection`` (density makes a film brighter; inverted films get the sign flipped); in the DRR
domain it adds ``delta_mu * path_mm`` to both the with-bone and the bone-free line integrals, exactly what
inserting it into the CT before projecting gives in a parallel-beam projection.

``JSRT_CONTRAST`` is the range of real nodule contrast on JSRT films (disc-minus-ring mean at 0.7 / 1.3-2.2
radii, in units of the film's 0.5-99.5 percentile window), measured by ``python -m training.nodule_sim`` over
the 124 nodules of ../shared/data/jsrt_scr: median 0.0236, 95th percentile 0.0637, 5th percentile -0.006 (some
nodules show no contrast by this measure; the simulated floor is 0.005); medians by subtlety 1-5: 0.0118,
0.0198, 0.0242, 0.0383, 0.0323. Only this range is taken from those films, never their pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

JSRT_CONTRAST = (0.005, 0.0236, 0.0637)  # low end, median, high end


@dataclass
class Nodule:
    """One simulated nodule: centre (column, row) and diameter in pixels of the image it goes into,
    ``amplitude`` of its thickest point (image units), ``kind`` solid | lobulated | part-solid."""

    x: float
    y: float
    diameter: float
    amplitude: float
    kind: str


def nodule_projection(diameter: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The nodule's projected thickness on a square patch of side ``ceil(1.6 * diameter) + 3`` px, centred, peak
    1: spheres voxelised at 4 voxels per pixel, summed along the beam, block-averaged back to pixels and
    slightly blurred (detector)."""
    from scipy import ndimage as ndi

    side = int(np.ceil(1.6 * diameter)) + 3
    sub = 4 if side <= 40 else 2  # sub-pixel voxels; fewer for big nodules (memory, time)
    n = side * sub
    r = diameter * sub / 2
    zz, yy, xx = np.ogrid[:n, :n, :n]
    c = (n - 1) / 2
    density = np.zeros((n, n, n), np.float32)
    balls = [(0.0, 0.0, 0.0, 1.0)]
    if kind == "lobulated":
        for _ in range(int(rng.integers(1, 4))):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            balls.append((*(direction * rng.uniform(0.3, 0.5) * r), rng.uniform(0.45, 0.75)))
        balls[0] = (0.0, 0.0, 0.0, 0.8)
    for dz, dy, dx, scale in balls:
        inside = (zz - c - dz) ** 2 + (yy - c - dy) ** 2 + (xx - c - dx) ** 2 <= (scale * r) ** 2
        density[inside] = 1.0
    if kind == "part-solid":  # ground glass around a solid core of 30-60 % of the diameter
        core = (zz - c) ** 2 + (yy - c) ** 2 + (xx - c) ** 2 <= (rng.uniform(0.3, 0.6) * r) ** 2
        density = np.where(density > 0, 0.3, 0.0).astype(np.float32)
        density[core] = 1.0
    thickness = density.sum(axis=0).reshape(side, sub, side, sub).mean(axis=(1, 3))
    thickness = ndi.gaussian_filter(thickness, rng.uniform(0.3, 0.8))
    return (thickness / max(float(thickness.max()), 1e-6)).astype(np.float32)


def sample_kind(rng: np.random.Generator) -> str:
    return str(rng.choice(["solid", "lobulated", "part-solid"], p=[0.5, 0.35, 0.15]))


def sample_contrast(rng: np.random.Generator, low: float = JSRT_CONTRAST[0], high: float = JSRT_CONTRAST[2]) -> float:
    """A nodule contrast (film window units) log-uniform over the JSRT range: subtle ones as often as obvious."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def sample_centres(region: np.ndarray, n: int, rng: np.random.Generator, anywhere: float = 0.0) -> np.ndarray:
    """``n`` (column, row) centres inside ``region`` (bool); with probability ``anywhere`` each is drawn from the
    region's bounding box instead (behind the heart or diaphragm, where real nodules also project)."""
    rows, cols = np.nonzero(region)
    if rows.size == 0:
        rows, cols = np.nonzero(np.ones_like(region, bool))
    out = []
    for _ in range(n):
        if rng.random() < anywhere:
            out.append((rng.uniform(cols.min(), cols.max()), rng.uniform(rows.min(), rows.max())))
        else:
            i = int(rng.integers(rows.size))
            out.append((cols[i] + rng.uniform(-0.5, 0.5), rows[i] + rng.uniform(-0.5, 0.5)))
    return np.array(out, np.float32).reshape(-1, 2)


def render_nodules(shape: tuple[int, int], nodules: list[Nodule], rng: np.random.Generator) -> np.ndarray:
    """The sum of the nodules' projections times their amplitudes on an image of ``shape`` (float32). An
    amplitude is the nodule's contrast as :func:`measure_contrast` would read it: its projection is scaled so
    the mean over a 0.7-radius disc minus the mean over the 1.3-2.2-radius ring (0 outside the nodule) is it."""
    out = np.zeros(shape, np.float32)
    for nod in nodules:
        patch = nodule_projection(nod.diameter, nod.kind, rng)
        side = patch.shape[0]
        yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
        disc = np.hypot(yy, xx) <= 0.35 * nod.diameter
        patch = patch * (nod.amplitude / max(float(patch[disc].mean()), 1e-6))
        r0, c0 = int(round(nod.y - (side - 1) / 2)), int(round(nod.x - (side - 1) / 2))
        rs, cs = slice(max(r0, 0), min(r0 + side, shape[0])), slice(max(c0, 0), min(c0 + side, shape[1]))
        if rs.start >= rs.stop or cs.start >= cs.stop:
            continue
        out[rs, cs] += patch[rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0]
    return out


def disc_mask(shape: tuple[int, int], nodules: list[Nodule], scale: float = 1.0) -> np.ndarray:
    """Bool image: inside ``scale`` times each nodule's radius."""
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    out = np.zeros(shape, bool)
    for nod in nodules:
        out |= np.hypot(rows - nod.y, cols - nod.x) <= scale * nod.diameter / 2
    return out


def random_nodules(
    region: np.ndarray, rng: np.random.Generator, n: int, diameter_px: tuple[float, float],
    contrast: tuple[float, float] = (JSRT_CONTRAST[0], JSRT_CONTRAST[2]), anywhere: float = 0.1,
) -> list[Nodule]:
    """``n`` nodules in ``region`` (bool), diameters log-uniform in ``diameter_px``, contrasts log-uniform."""
    centres = sample_centres(region, n, rng, anywhere)
    return [
        Nodule(float(x), float(y), float(np.exp(rng.uniform(*np.log(diameter_px)))),
               sample_contrast(rng, *contrast), sample_kind(rng))
        for x, y in centres
    ]


def measure_contrast(film: np.ndarray, x: float, y: float, diameter: float) -> float:
    """Disc (0.7 radius) minus ring (1.3-2.2 radii) mean of ``film`` around (x, y): the contrast a nodule there
    shows, in the film's own units (window it first to compare films)."""
    rows, cols = np.ogrid[:film.shape[0], :film.shape[1]]
    d = np.hypot(rows - y, cols - x) / (diameter / 2)
    return float(film[d <= 0.7].mean() - film[(d >= 1.3) & (d <= 2.2)].mean())


if __name__ == "__main__":  # re-measure JSRT_CONTRAST
    import csv
    from pathlib import Path

    from lungx_core.cxr.thoracic import whole_film
    from lungx_core.io.readers import read_radiograph

    root = Path("../shared/data/jsrt_scr")
    with open(root / "nodules.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    values, grades = [], {}
    for r in rows:
        film = read_radiograph(root / "images" / f"{r['id']}.png").array.astype(np.float64)
        windowed, _, _ = whole_film(film, film.shape[0])
        c = measure_contrast(windowed, float(r["x"]), float(r["y"]), float(r["diameter_px"]))
        values.append(c)
        grades.setdefault(r["subtlety"], []).append(c)
    print("percentiles 5/50/95:", np.round(np.percentile(values, [5, 50, 95]), 4))
    print({g: round(float(np.median(v)), 4) for g, v in sorted(grades.items())})
