"""`synscenes`: procedural road scenes with Cityscapes-class masks and metric depth.

A pinhole camera (about 1.5 m above the road, horizontal field of view 55-90 degrees, small random
pitch, yaw and roll, horizon near the middle row) looks down a straight road. The world is a
ground plane plus axis-aligned boxes and ellipsoids: lanes with dashed markings (class road),
raised sidewalks with kerbs, grass beyond, building blocks with gaps, walls, fences, street lamps,
signs on poles, traffic lights, trees (trunk + crown blobs) and hedges, cars, trucks and buses in
both directions, people on the sidewalks and cyclists. Each pixel's ray is intersected with every
object in numpy, nearest hit wins (a z-buffer), so mask and depth come from the same geometry.
Depth is the z-depth in metres along the optical axis, float32; sky and anything beyond 80 m are 0
(invalid, as in LiDAR ground truth). Masks use the 19 Cityscapes training classes in their
standard order (train and motorcycle are never drawn).

Two looks of this world: ``game`` (flat colours, mild per-object variation, simple directional
shading) and ``photo`` (procedural textures for asphalt, paving, brick, plaster with windows,
foliage and grass; a sun with shadows cast on the ground; haze, exposure, colour cast, vignetting,
blur and sensor noise) whose layouts also differ (narrower roads, taller buildings, more
vegetation, cars and people, another camera height and field-of-view range). ``photo`` is a
controlled synthetic shift, not real photographs: use it to study adaptation with known labels.

Conditions of the photo look, each one controlled change of it (``CONDITIONS``): ``fog`` (visibility
of 8-20 m (haze scale), grey sky, diffuse light), ``night`` (no sun, a dark sky, headlights, pools of light under
the street lamps, lit windows, more sensor noise), ``rain`` (overcast light, a wet and darker road
that mirrors the sky, rain streaks, haze), ``high-cam`` (the camera 3.5-5 m up, pitched 6-11 degrees
down: the horizon moves up the image), ``wide`` (horizontal field of view 100-115 degrees) and
``suburb`` (another layout: low houses set back behind front gardens, more trees and hedges, fewer
cars and people). ``fog``, ``night`` and ``rain`` draw the same world as ``photo`` for a seed, and
``high-cam`` and ``wide`` the same world through another camera, so masks of one seed differ only where
the camera does.

Instances (for detection): every car, truck, bus, person, rider and bicycle is one instance, made of
its parts (a car's body, glass and tyres; a person's legs, torso and head; a cyclist is a bicycle
instance and a rider instance). ``render(..., instances=True)`` also returns an (H, W) instance map
from the same z-buffer (0 = no instance); drawing it consumes no random numbers, so images, masks
and depth are exactly those of ``render(...)``. :func:`instance_boxes` turns a map into the boxes of
the visible pixels of each instance (fully hidden objects have none; slivers are dropped).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


from .transforms import convert_channels

CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
PALETTE = np.array([(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
                    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
                    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)],
                   np.uint8)
(ROAD, WALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS, _TRAIN,
 _MOTORCYCLE, BICYCLE) = range(19)
THING_CLASSES = (PERSON, RIDER, CAR, TRUCK, BUS, BICYCLE)  # the Cityscapes thing classes this renderer draws
LOOKS = ("game", "photo")
CONDITIONS = ("fog", "night", "rain", "high-cam", "wide", "suburb")  # variants of the photo look
MAX_DEPTH = 80.0  # metres; farther surfaces get depth 0 (invalid), like sky
SYNSCENES_VERSION = 1  # bump whenever the renderer changes what a seed produces
NEAR = 0.05

# Layout statistics of each look: (low, high) ranges; counts are inclusive.
_LAYOUT = {
    "game": dict(lanes=(2, 4), lane_w=(3.3, 3.8), walk=(2.0, 4.5), setback=(0.0, 6.0), height=(6.0, 22.0), gap=0.35,
                 open_side=0.2, cam_h=(1.4, 1.6), hfov=(75.0, 90.0), cars=(0, 4), people=(0, 4), trees=(1, 5),
                 hedges=(0, 1), bikes=0.2, parked=0.2),
    "photo": dict(lanes=(2, 2), lane_w=(2.8, 3.2), walk=(1.2, 3.0), setback=(0.0, 3.0), height=(12.0, 40.0), gap=0.2,
                  open_side=0.3, cam_h=(1.2, 1.9), hfov=(55.0, 72.0), cars=(2, 8), people=(1, 7), trees=(5, 12),
                  hedges=(1, 4), bikes=0.35, parked=0.45),
}
_LAYOUT.update({
    "fog": _LAYOUT["photo"], "night": _LAYOUT["photo"], "rain": _LAYOUT["photo"],
    "high-cam": {**_LAYOUT["photo"], "cam_h": (3.5, 5.0), "pitch": (-11.0, -6.0)},
    "wide": {**_LAYOUT["photo"], "hfov": (100.0, 115.0)},
    "suburb": dict(lanes=(2, 2), lane_w=(3.0, 3.5), walk=(1.5, 2.5), setback=(4.0, 12.0), height=(4.0, 8.0), gap=0.5,
                   open_side=0.4, cam_h=(1.2, 1.9), hfov=(55.0, 72.0), cars=(0, 3), people=(0, 2), trees=(8, 16),
                   hedges=(3, 7), bikes=0.1, parked=0.5),
})
# Surface colours per class (RGB); each object draws one and varies it a little.
_COLOURS = {
    ROAD: [(88, 88, 92), (70, 72, 75)], WALK: [(175, 170, 162), (196, 186, 170), (150, 150, 155)],
    BUILDING: [(205, 185, 150), (160, 85, 60), (180, 180, 186), (228, 218, 198), (125, 112, 100), (150, 160, 175)],
    WALL: [(165, 162, 150), (135, 125, 112)], FENCE: [(125, 100, 75), (150, 152, 150)],
    POLE: [(112, 112, 118), (60, 72, 60)], LIGHT: [(40, 40, 42), (195, 165, 40)],
    SIGN: [(30, 80, 185), (205, 30, 30), (240, 240, 240), (240, 200, 30)],
    VEG: [(62, 122, 42), (42, 100, 50), (92, 132, 52)], TERRAIN: [(112, 160, 62), (140, 150, 82)],
    PERSON: [(40, 40, 60), (150, 40, 40), (200, 200, 190), (60, 90, 140), (90, 70, 50)],
    RIDER: [(200, 60, 40), (40, 40, 40), (230, 200, 40)],
    CAR: [(200, 30, 30), (30, 30, 32), (232, 232, 232), (40, 70, 160), (150, 150, 156), (20, 100, 60)],
    TRUCK: [(232, 232, 232), (200, 120, 30)], BUS: [(222, 200, 40), (200, 40, 40), (230, 230, 235)],
    BICYCLE: [(30, 30, 30), (150, 20, 20)],
}
PLAIN, BRICK, PLASTER, GLASS, LEAVES, BARK = range(6)  # surface textures of the photo look
_SKIN, _BARK_COL, _TYRE = (205, 160, 130), (92, 66, 44), (26, 26, 28)


class _World:
    """The scene: axis-aligned boxes and ellipsoids (stored as their bounding boxes) with class,
    colour and texture, plus the road's lateral extent and lane lines."""

    def __init__(self, rng: np.random.Generator, look: str):
        self.rng, self.look = rng, look
        self.lamps = []  # (x, y, z) of each street lamp's head (the night condition lights them)
        self.lo, self.hi, self.ell, self.cls, self.col, self.tex = [], [], [], [], [], []
        self.inst, self.current, self.n_inst = [], 0, 0  # instance of each object (0 = none)

    def begin_instance(self) -> None:
        """The objects added from now on are parts of one new instance (until ``end_instance``)."""
        self.n_inst += 1
        self.current = self.n_inst

    def end_instance(self) -> None:
        self.current = 0

    def colour(self, cls: int) -> np.ndarray:
        opts = _COLOURS[cls]
        spread = 0.06 if self.look == "game" else 0.15
        return np.clip(np.asarray(opts[self.rng.integers(len(opts))], np.float32)
                       * self.rng.uniform(1 - spread, 1 + spread, 3), 0, 255)

    def box(self, x, y, z, cls, col=None, tex=PLAIN, ell=False):
        self.lo.append((min(x), min(y), min(z)))
        self.hi.append((max(x), max(y), max(z)))
        self.ell.append(ell)
        self.inst.append(self.current)
        self.cls.append(cls)
        self.tex.append(tex)
        self.col.append(self.colour(cls) if col is None else np.asarray(col, np.float32))

    def blob(self, c, r, cls, col=None, tex=PLAIN):
        x, y, z = ((c[i] - r[i], c[i] + r[i]) for i in range(3))
        self.box(x, y, z, cls, col, tex, True)


def _roadside(w: _World, p: dict, side: int, front: float) -> None:
    """Buildings with gaps (walls, fences, hedges in some), or an open side of hedges and fences."""
    rng, u = w.rng, w.rng.uniform
    open_side = rng.random() < p["open_side"]
    z = u(-40, 0)
    while z < 300:
        if open_side or rng.random() < p["gap"]:
            length, r = u(4, 15) if not open_side else u(10, 40), rng.random()
            if r < 0.3:
                w.box((front, front + side * 0.25), (0, u(0.8, 2.5)), (z, z + length), WALL)
            elif r < 0.55:
                w.box((front, front + side * 0.06), (0, u(1.0, 2.2)), (z, z + length), FENCE)
            elif r < 0.8:
                w.box((front, front + side * u(0.8, 1.5)), (0, u(0.8, 1.6)), (z, z + length), VEG, tex=LEAVES)
        else:
            length, x0 = u(8, 35), front + side * u(0, 1.5)
            w.box((x0, x0 + side * u(10, 25)), (0, u(*p["height"])), (z, z + length), BUILDING,
                  tex=BRICK if rng.random() < 0.5 else PLASTER)
        z += length + (u(0, 2) if rng.random() < 0.5 else 0)


def _vehicle(w: _World, x: float, z: float, lane_w: float) -> tuple[float, float, float]:
    """A car, truck or bus with its near end at ``z``; returns its (x, width, length)."""
    rng, u = w.rng, w.rng.uniform
    r = rng.random()
    cls = BUS if r < 0.07 else TRUCK if r < 0.15 else CAR
    width = min(lane_w - 0.4, u(1.65, 1.9) if cls == CAR else u(2.3, 2.55))
    length = u(3.9, 4.8) if cls == CAR else u(6, 9) if cls == TRUCK else u(10, 12)
    col = w.colour(cls)
    w.begin_instance()
    if cls == CAR:
        body, top = u(0.9, 1.05), u(1.4, 1.6)
        w.box((x - width / 2, x + width / 2), (0.3, body), (z, z + length), cls, col)
        glass = col * 0.45 if w.look == "game" else (60, 68, 78)
        a = u(0.2, 0.35)
        w.box((x - width / 2 + 0.08, x + width / 2 - 0.08), (body, top), (z + a * length, z + (a + 0.45) * length),
              cls, glass, GLASS)
    else:
        w.box((x - width / 2, x + width / 2), (0.35, u(2.8, 3.5)), (z, z + length), cls, col)
    for zc in (z + 0.8, z + length - 0.8):
        w.box((x - width / 2 + 0.03, x + width / 2 - 0.03), (0, 0.62), (zc - 0.33, zc + 0.33), cls, _TYRE)
    w.end_instance()
    return x, width, length


def _layout(rng: np.random.Generator, look: str) -> tuple[_World, dict]:
    p, w = _LAYOUT[look], _World(rng, look)
    u = rng.uniform
    n_lanes, lane = int(rng.integers(p["lanes"][0], p["lanes"][1] + 1)), u(*p["lane_w"])
    ego = int(rng.integers(n_lanes // 2, n_lanes))  # right-hand traffic: the left half of the lanes is oncoming
    w.road = (-(ego + 0.5) * lane, (n_lanes - ego - 0.5) * lane)
    w.lines = [(w.road[0] + i * lane, i != n_lanes // 2 or rng.random() < 0.5) for i in range(1, n_lanes)]
    w.dash, w.kerb = u(0, 9), u(0.1, 0.2)
    w.road_col, w.terrain_col = w.colour(ROAD), w.colour(TERRAIN)
    cam = dict(x=u(-0.4, 0.4), h=u(*p["cam_h"]), hfov=np.radians(u(*p["hfov"])),
               pitch=np.radians(u(*p.get("pitch", (-3, 1.5)))), yaw=np.radians(u(-4, 4)), roll=np.radians(u(-2, 2)),
               cy=u(-0.03, 0.03))
    walks = {}
    for side in (-1, 1):
        edge = w.road[0] if side < 0 else w.road[1]
        outer = edge + side * u(*p["walk"])
        w.box((edge, outer), (0, w.kerb), (-5, 600), WALK)
        walks[side] = (edge, outer, outer + side * u(*p["setback"]))
        _roadside(w, p, side, walks[side][2])
    _street_furniture(w, rng, walks)
    _greenery(w, rng, p, walks)
    _traffic(w, rng, p, walks, n_lanes, lane, ego, cam)
    return w, cam


def _street_furniture(w: _World, rng: np.random.Generator, walks: dict) -> None:
    """Street lamps, signs and traffic lights beside (or over) the road."""
    u = rng.uniform
    for side in (-1, 1):  # street lamps
        if rng.random() < 0.7:
            x, gap, top, t, col = walks[side][0] + side * u(0.3, 0.6), u(15, 35), u(5, 9), u(0.16, 0.26), w.colour(POLE)
            for z in np.arange(u(2, gap), 150, gap):
                w.box((x - t / 2, x + t / 2), (0, top), (z - t / 2, z + t / 2), POLE, col)
                w.box((x, x - side * 1.6), (top - 0.12, top), (z - 0.06, z + 0.06), POLE, col)
                w.lamps.append((x - side * 1.6, top, z))
    for _ in range(int(rng.integers(0, 4))):  # signs: a plate on a pole
        side = 1 if rng.random() < 0.75 else -1
        x, z, top, s = walks[side][0] + side * u(0.3, 0.8), u(6, 60), u(2.0, 2.8), u(0.5, 0.8)
        w.box((x - 0.035, x + 0.035), (0, top + s / 2), (z - 0.035, z + 0.035), POLE)
        w.box((x - s / 2, x + s / 2), (top, top + s), (z - 0.09, z - 0.05), SIGN)
    for _ in range(int(rng.integers(0, 3))):  # traffic lights, beside the road or hanging over it
        side, z = (1 if rng.random() < 0.7 else -1), u(10, 70)
        x, col = walks[side][0] + side * 0.5, w.colour(POLE)
        top = u(5.5, 6.5) if rng.random() < 0.5 else u(2.5, 3.5)
        w.box((x - 0.08, x + 0.08), (0, top), (z - 0.08, z + 0.08), POLE, col)
        if top > 5:
            x = x - side * u(3, 5)
            w.box((x, walks[side][0] + side * 0.5), (top - 0.15, top), (z - 0.06, z + 0.06), POLE, col)
            top -= 1.05
        w.box((x - 0.17, x + 0.17), (top, top + 0.9), (z - 0.3, z), LIGHT)


def _greenery(w: _World, rng: np.random.Generator, p: dict, walks: dict) -> None:
    """Trees (a trunk and one to three crowns) and hedges behind the sidewalks."""
    u = rng.uniform
    for _ in range(int(rng.integers(p["trees"][0], p["trees"][1] + 1))):
        side = int(rng.choice((-1, 1)))
        edge, outer, front = walks[side]
        x, z, trunk, t = outer + side * u(-0.6, abs(front - outer) + 1.0), u(3, 120), u(1.8, 3.5), u(0.12, 0.2)
        w.box((x - t, x + t), (0, trunk), (z - t, z + t), VEG, np.asarray(_BARK_COL) * u(0.8, 1.2), BARK)
        for _ in range(int(rng.integers(1, 4))):
            r = u(1.2, 3.0)
            w.blob((x + u(-0.8, 0.8), trunk + r * 0.6 + u(0, 1), z + u(-0.8, 0.8)), (r, r * u(0.8, 1.2), r), VEG,
                   tex=LEAVES)
    for _ in range(int(rng.integers(p["hedges"][0], p["hedges"][1] + 1))):
        side = int(rng.choice((-1, 1)))
        x, z = walks[side][1], u(2, 60)
        w.box((x + side * 0.2, x + side * u(0.8, 1.5)), (0, u(0.8, 1.6)), (z, z + u(4, 20)), VEG, tex=LEAVES)


def _traffic(w: _World, rng: np.random.Generator, p: dict, walks: dict, n_lanes: int, lane: float, ego: int,
             cam: dict) -> None:
    """Vehicles in the lanes or parked at a kerb (never overlapping), people on the sidewalks, a cyclist."""
    u = rng.uniform
    placed = []
    for _ in range(int(rng.integers(p["cars"][0], p["cars"][1] + 1))):
        for _ in range(6):
            i = int(rng.integers(n_lanes))
            x, z = w.road[0] + (i + 0.5) * lane + u(-0.3, 0.3), u(9 if i == ego else 6, 90)
            if rng.random() < p["parked"]:  # parked at a kerb, never in the ego lane
                kerb_x = w.road[1] - 1.15 if rng.random() < 0.6 else w.road[0] + 1.15
                x = kerb_x if abs(kerb_x - cam["x"]) > 2.0 else x
            if all(abs(x - px) > (2.6 + pw) / 2 or z > pz + pl + 1.5 or z + 12 < pz for px, pz, pw, pl in placed):
                xv, wv, lv = _vehicle(w, x, z, lane)
                placed.append((xv, z, wv, lv))
                break
    for _ in range(int(rng.integers(p["people"][0], p["people"][1] + 1))):
        side = int(rng.choice((-1, 1)))
        edge, outer, _ = walks[side]
        x, z, hp, y0 = edge + side * u(0.4, max(0.5, abs(outer - edge) - 0.3)), u(3, 50), u(1.55, 1.9), w.kerb
        legs = w.colour(PERSON)
        w.begin_instance()
        for a, b in ((-0.2, -0.03), (0.03, 0.2)):
            w.box((x + a, x + b), (y0, y0 + 0.47 * hp), (z - 0.12, z + 0.12), PERSON, legs)
        w.box((x - 0.23, x + 0.23), (y0 + 0.47 * hp, y0 + 0.85 * hp), (z - 0.15, z + 0.15), PERSON)
        w.blob((x, y0 + hp - 0.11, z), (0.1, 0.12, 0.1), PERSON, _SKIN)
        w.end_instance()
    if rng.random() < p["bikes"]:  # a cyclist near the right kerb
        x, z, col = w.road[1] - u(0.6, 1.0), u(8, 40), w.colour(BICYCLE)
        w.begin_instance()
        for zc in (z, z + 1.05):
            w.blob((x, 0.34, zc), (0.03, 0.34, 0.34), BICYCLE, col)
        w.box((x - 0.03, x + 0.03), (0.35, 0.85), (z, z + 1.05), BICYCLE, col)
        w.begin_instance()
        w.box((x - 0.15, x + 0.15), (0.6, 1.05), (z + 0.35, z + 0.65), RIDER)
        w.box((x - 0.2, x + 0.2), (1.05, 1.6), (z + 0.3, z + 0.6), RIDER)
        w.blob((x, 1.72, z + 0.45), (0.11, 0.12, 0.11), RIDER, _SKIN)
        w.end_instance()


# ---- geometry: rays, intersections, z-buffer -------------------------------------------------
_BITS = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], bool)
_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1])


def _rotation(cam: dict) -> np.ndarray:
    """Camera-to-world rotation: yaw about Y, then pitch about X, then roll about the optical axis."""
    (cy, sy), (cp, sp), (cr, sr) = ((np.cos(a), np.sin(a)) for a in (cam["yaw"], cam["pitch"], cam["roll"]))
    yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    pitch = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return yaw @ pitch @ roll


def _rays(cam: dict, h: int, w: int):
    """Camera centre O (3,), world ray directions D (3, h, w) scaled so that t along a ray is the
    z-depth, the rotation, the focal length in pixels and the principal point."""
    f = (w / 2) / np.tan(cam["hfov"] / 2)
    cx, cy = w / 2, h / 2 + cam["cy"] * h
    R = _rotation(cam)
    xs, ys = (np.arange(w) + 0.5 - cx) / f, -(np.arange(h) + 0.5 - cy) / f
    dc = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None], np.ones((1, 1))))
    D = np.tensordot(R, dc, 1).astype(np.float32)
    return np.array([cam["x"], cam["h"], 0.0], np.float32), D, R, f, cx, cy


def _rects(lo, hi, O, R, f, cx, cy, h, w) -> np.ndarray:
    """(K, 4) pixel rectangles (r0, r1, c0, c1) that hold each box's image: the projection of the
    box clipped to the near plane (its corners in front plus its edges' crossings of the plane)."""
    C = (np.where(_BITS[None, :, :], hi[:, None], lo[:, None]) - O) @ R  # (K, 8, 3) camera coordinates
    a, b = C[:, _EDGES[:, 0]], C[:, _EDGES[:, 1]]
    za, zb = a[..., 2], b[..., 2]
    s = (NEAR - za) / np.where(zb == za, 1, zb - za)
    pts = np.concatenate([C, a + s[..., None] * (b - a)], 1)
    ok = np.concatenate([C[..., 2] >= NEAR, (za - NEAR) * (zb - NEAR) < 0], 1)
    z = np.maximum(pts[..., 2], NEAR)
    u, v = cx + f * pts[..., 0] / z, cy - f * pts[..., 1] / z
    big = 1e9
    c0, c1 = np.where(ok, u, big).min(1), np.where(ok, u, -big).max(1)
    r0, r1 = np.where(ok, v, big).min(1), np.where(ok, v, -big).max(1)
    out = [np.clip(np.floor(r0), 0, h), np.clip(np.ceil(r1), 0, h), np.clip(np.floor(c0), 0, w),
           np.clip(np.ceil(c1), 0, w)]
    return np.stack(out, 1).astype(np.int64)


def _hit(o, d, lo, hi, ell: bool, normals: bool = True):
    """First hit of the rays o + t d (t > NEAR; o, d are (3, N) or (3, 1)) with a box, or with the
    ellipsoid inscribed in it: t (inf = miss) and unit normals (3, N) (None unless ``normals``)."""
    lo, hi = lo[:, None], hi[:, None]
    if ell:
        c, r = (lo + hi) / 2, (hi - lo) / 2
        oc, dd = (o - c) / r, d / r
        a, b, cc = (dd * dd).sum(0), (oc * dd).sum(0), (oc * oc).sum(0) - 1
        disc = b * b - a * cc
        t = (-b - np.sqrt(np.maximum(disc, 0))) / a
        t = np.where((disc > 0) & (t > NEAR), t, np.inf)
        if not normals:
            return t, None
        n = (oc + np.where(np.isfinite(t), t, 0) * dd) / r
        return t, n / np.maximum(np.sqrt((n * n).sum(0)), 1e-6)
    inv = 1 / np.where(np.abs(d) < 1e-9, 1e-9, d)
    t0, t1 = (lo - o) * inv, (hi - o) * inv
    tmin = np.minimum(t0, t1)
    tn, tf = tmin.max(0), np.maximum(t0, t1).min(0)
    t = np.where((tn <= tf) & (tn > NEAR), tn, np.inf)
    return t, (-np.sign(d) * (np.arange(3)[:, None] == tmin.argmax(0)) if normals else None)


def _cast(w: _World, O, D, R, f, cx, cy):
    """Z-buffer over the ground plane and every object: depth t, object id (-1 sky, 0 ground,
    k + 1 object k) and unit normals (3, h, w)."""
    _, h, wd = D.shape
    zbuf = np.full((h, wd), np.inf, np.float32)
    obj = np.full((h, wd), -1, np.int32)
    nrm = np.zeros((3, h, wd), np.float32)
    tg = np.where(D[1] < -1e-6, -O[1] / np.minimum(D[1], -1e-6), np.inf)
    ground = tg < 5000
    zbuf[ground], obj[ground], nrm[1][ground] = tg[ground], 0, 1
    lo, hi = np.array(w.lo, np.float32), np.array(w.hi, np.float32)
    for k, (r0, r1, c0, c1) in enumerate(_rects(lo, hi, O, R, f, cx, cy, h, wd)):
        if r0 >= r1 or c0 >= c1:
            continue
        t, n = _hit(O[:, None], D[:, r0:r1, c0:c1].reshape(3, -1), lo[k], hi[k], w.ell[k])
        zb = zbuf[r0:r1, c0:c1]
        t = t.reshape(zb.shape)
        upd = t < zb
        if upd.any():
            zb[upd] = t[upd]
            obj[r0:r1, c0:c1][upd] = k + 1
            nrm[:, r0:r1, c0:c1][:, upd] = n.reshape(3, *zb.shape)[:, upd]
    return zbuf, obj, nrm


def _labels(w: _World, O, D, zbuf, obj):
    """Class mask (ground split into road and terrain by its lateral position) and depth in metres."""
    cls = np.array([ROAD] + w.cls, np.uint8)
    mask = np.where(obj < 0, SKY, cls[np.maximum(obj, 0)]).astype(np.uint8)
    g = obj == 0
    x = O[0] + zbuf[g] * D[0][g]
    mask[g] = np.where((x >= w.road[0]) & (x <= w.road[1]), ROAD, TERRAIN)
    depth = np.where((obj >= 0) & (zbuf <= MAX_DEPTH), zbuf, 0).astype(np.float32)
    return mask, depth


# ---- shading: the game look and the photo look -----------------------------------------------
def _hash(ix, iy, seed: int) -> np.ndarray:
    h = (ix * 374761393 + iy * 668265263 + seed * 2246822519) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65535.0


def _noise(x, y, seed: int, octaves: int = 1) -> np.ndarray:
    """Value noise in [0, 1], smooth at unit scale, summed over ``octaves`` halving in amplitude."""
    total, amp, norm = 0.0, 1.0, 0.0
    for o in range(octaves):
        ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        fx, fy = x - ix, y - iy
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        a, b = _hash(ix, iy, seed + o), _hash(ix + 1, iy, seed + o)
        c, d = _hash(ix, iy + 1, seed + o), _hash(ix + 1, iy + 1, seed + o)
        total = total + amp * ((a + (b - a) * fx) * (1 - fy) + (c + (d - c) * fx) * fy)
        norm, amp, x, y = norm + amp, amp * 0.5, x * 2.03, y * 2.03
    return total / norm


def _textures(w: _World, img, P, nrm, obj, mask, road, seed: int) -> None:
    """Multiply the photo look's base colours by procedural textures, in world coordinates."""
    tex = np.array([PLAIN] + w.tex)[np.maximum(obj, 0)]
    tex[obj < 0] = -1
    X, Y, Z = P
    facade = np.where(np.abs(nrm[0]) > 0.5, Z, X)  # horizontal coordinate along a vertical face

    def mul(sel, factor):
        img[sel] *= np.asarray(factor, np.float32)[..., None]

    xr, zr = X[road], Z[road]
    mul(road, 0.8 + 0.25 * _noise(xr / 0.05, zr / 0.05, seed, 2) + 0.15 * _noise(xr / 3, zr / 3, seed + 7))
    grass = (obj == 0) & ~road
    mul(grass, 0.6 + 0.6 * _noise(X[grass] / 0.12, Z[grass] / 0.12, seed + 11, 3))
    walk = (mask == WALK) & (nrm[1] > 0.5)
    joint = (np.mod(X[walk], 0.6) < 0.04) | (np.mod(Z[walk], 0.6) < 0.04)
    mul(walk, np.where(joint, 0.75, 1.0) * (0.9 + 0.2 * _noise(X[walk] / 0.1, Z[walk] / 0.1, seed + 13)))
    sel = tex == BRICK
    a, b = facade[sel], Y[sel]
    row = np.floor(b / 0.075)
    a = a + np.mod(row, 2) * 0.11
    mortar = (np.mod(b, 0.075) < 0.012) | (np.mod(a, 0.22) < 0.016)
    mul(sel, np.where(mortar, 1.3, 0.8 + 0.35 * _hash(np.floor(a / 0.22).astype(np.int64), row.astype(np.int64), seed)))
    sel = tex == PLASTER
    mul(sel, 0.9 + 0.2 * _noise(facade[sel] / 0.6, Y[sel] / 0.6, seed + 17, 2))
    sel = (mask == BUILDING) & (np.abs(nrm[1]) < 0.5) & (Y > 2.8)
    a, b = facade[sel] / w.window[0], (Y[sel] - 0.4) / w.window[1]
    fa, fb = np.mod(a, 1), np.mod(b, 1)
    win = (fa > 0.25) & (fa < 0.75) & (fb > 0.3) & (fb < 0.8)
    glass = (0.25 + 0.35 * _hash(np.floor(a).astype(np.int64), np.floor(b).astype(np.int64), seed + 3))[:, None]
    w.windows = (np.flatnonzero(sel)[win] // img.shape[1], np.flatnonzero(sel)[win] % img.shape[1], glass[win, 0])
    img[w.windows[0], w.windows[1]] = (np.array([70, 85, 105], np.float32) * 2 * glass)[win]
    for kind, scale, lo_, amp, sd in ((LEAVES, 0.25, 0.45, 1.0, 19), (BARK, 0.08, 0.75, 0.4, 23),
                                      (GLASS, 0.5, 0.7, 0.5, 29), (PLAIN, 0.3, 0.9, 0.2, 31)):
        sel = tex == kind
        mul(sel, lo_ + amp * _noise((X[sel] + Z[sel]) / scale, Y[sel] / scale, seed + sd, 3))


def _shadows(w: _World, G, L) -> np.ndarray:
    """True where the sun (direction L) is blocked for the ground points G (3, N)."""
    order = np.argsort(G[2])
    Gs, out = G[:, order] + np.array([[0], [0.02], [0]], np.float32), np.zeros(G.shape[1], bool)
    lo, hi = np.array(w.lo, np.float32), np.array(w.hi, np.float32)
    for k in range(len(lo)):
        if w.cls[k] == WALK or hi[k, 1] < 0.4:
            continue
        reach = -L[2] * hi[k, 1] / L[1]
        a, b = np.searchsorted(Gs[2], [lo[k, 2] + min(reach, 0), hi[k, 2] + max(reach, 0)])
        if a < b:
            out[a:b] |= np.isfinite(_hit(Gs[:, a:b], L[:, None], lo[k], hi[k], w.ell[k], False)[0])
    res = np.empty_like(out)
    res[order] = out
    return res


def _shade(w: _World, rng: np.random.Generator, O, D, zbuf, obj, nrm, mask) -> np.ndarray:
    """(h, w, 3) uint8 image of the cast scene in the world's look (a condition shades as ``photo``
    with the changes of :func:`_weather`)."""
    photo, u, cond = w.look != "game", rng.uniform, w.look
    h, wd = mask.shape
    P = O[:, None, None] + np.where(obj >= 0, zbuf, 0) * D
    img = np.array([(0, 0, 0)] + w.col, np.float32)[np.maximum(obj, 0)]
    road, grass = (obj == 0) & (mask == ROAD), (obj == 0) & (mask == TERRAIN)
    img[road], img[grass] = w.road_col, w.terrain_col
    line = np.zeros((h, wd), bool)
    for x, dashed in w.lines + ([(w.road[0] + 0.3, False), (w.road[1] - 0.3, False)] if photo else []):
        line |= (np.abs(P[0] - x) < 0.07) & ((np.mod(P[2] + w.dash, 9.0) < 3.0) if dashed else True)
    line &= road
    img[line] = (200, 200, 190) if photo else (230, 230, 225)
    elev, az = np.radians(u(25, 65) if photo else u(25, 60)), u(0, 2 * np.pi)
    L = np.array([np.cos(elev) * np.sin(az), np.sin(elev), np.cos(elev) * np.cos(az)], np.float32)
    ndl = np.clip(np.tensordot(L, nrm, 1), 0, 1)
    e = D[1] / np.sqrt((D * D).sum(0))
    horizon, zenith = (np.array((205, 212, 222)), np.array((95, 140, 200))) if photo else \
        (np.array((175, 205, 240)), np.array((70, 135, 225)))
    horizon, zenith = _SKIES.get(cond, (horizon, zenith))
    sky = (horizon + (zenith - horizon) * np.clip(e * 2.5, 0, 1)[..., None]).astype(np.float32)
    if photo:
        w.window = (u(2.5, 3.5), u(3.0, 3.6))
        seed = int(rng.integers(1 << 30))
        _textures(w, img, P, nrm, obj, mask, road, seed)
        flat = (obj >= 0) & (nrm[1] > 0.9) & (P[1] < 0.3) & (zbuf < 150)
        ndl[flat] *= ~_shadows(w, P[:, flat], L)
        amb, sun = u(0.35, 0.5), np.array((1.0, 0.96, 0.88)) * u(0.8, 1.1)
        if cond in _WEATHER:
            img = _weather(cond, w, rng, img, sky, O, P, D, zbuf, obj, ndl, road, seed)
        else:
            img *= amb * np.array((0.92, 0.96, 1.05)) + sun * ndl[..., None] * (1 - amb)
        up = obj < 0
        dx, dz, dy = D[0][up], D[2][up], D[1][up] + 0.15
        cloud = np.clip((_noise(dx / dy * 3, dz / dy * 3, seed + 37, 4) - u(0.45, 0.7)) * 3, 0, 1)
        if cond not in ("fog", "night"):  # fog hides the clouds; night's are unlit
            sky[up] += (cloud * np.clip(e[up] * 8, 0, 1))[:, None] * ((250 if cond != "rain" else 175) - sky[up])
        haze = (1 - np.exp(-zbuf / u(150, 400)))[..., None]
        if cond in ("fog", "rain"):
            haze = (1 - np.exp(-zbuf / (u(8, 20) if cond == "fog" else u(60, 150))))[..., None]
        elif cond == "night":
            haze = haze * 0.2
        img = np.where((obj >= 0)[..., None], img * (1 - haze) + horizon * haze, sky)
        img = img * u(0.75, 1.25) * rng.uniform(0.9, 1.1, 3)  # exposure, colour cast
        img = 255 * (np.clip(img, 0, None) / 255) ** u(0.8, 1.1)
        yy, xx = np.mgrid[-1:1:h * 1j, -1:1:wd * 1j]
        img *= (1 - u(0.1, 0.4) * (xx * xx + yy * yy) / 2)[..., None]
        if cond == "rain":
            img = _rain_streaks(rng, img)
        pil = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))
        img = np.asarray(pil.filter(ImageFilter.GaussianBlur(u(0.4, 1.0) * wd / 256)), np.float32)
        img = img + rng.normal(0, 1, img.shape) * (u(2, 5) + u(0.1, 0.3) * np.sqrt(img))
        if cond == "night":  # a dark scene at high sensor gain
            img = img + rng.normal(0, 1, img.shape) * u(4, 8)
    else:
        img *= 0.55 + 0.45 * ndl[..., None]
        img = np.where((obj >= 0)[..., None], img, sky)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---- conditions of the photo look: fog, night, rain -------------------------------------------
_SKIES = {"fog": (np.array((196, 198, 200)), np.array((182, 185, 190))),
          "night": (np.array((18, 20, 30)), np.array((3, 4, 10))),
          "rain": (np.array((158, 162, 168)), np.array((118, 122, 132)))}
_WEATHER = ("fog", "night", "rain")


def _weather(cond: str, w: _World, rng, img, sky, O, P, D, zbuf, obj, ndl, road, seed: int) -> np.ndarray:
    """Light the textured scene (``img``: albedo) under ``cond`` instead of the photo look's sun."""
    u = rng.uniform
    if cond in ("fog", "rain"):  # overcast: mostly diffuse light, a weak sun
        amb = u(0.75, 0.9)
        img = img * (amb * np.array((0.97, 0.98, 1.0)) + 0.5 * ndl[..., None] * (1 - amb))
        if cond == "rain":  # a wet road: darker, mirroring the grey sky, puddles mirror more
            X, Z = P[0][road], P[2][road]
            puddle = np.clip((_noise(X / 1.5, Z / 1.5, seed + 41, 2) - 0.55) * 4, 0, 1)
            mirror = (0.25 + 0.5 * puddle)[:, None]
            img[road] = img[road] * 0.55 * (1 - mirror) + sky[road] * mirror
        return img
    # night: a little moonlight, the ego car's headlights, pools of light under the street lamps, lit windows
    amb = u(0.03, 0.07)
    light = np.full(zbuf.shape, amb, np.float32)
    seen = obj >= 0
    lateral = (P[0] - O[0]) / (2.0 + 0.25 * np.maximum(zbuf, 0))
    light += np.where(seen, u(0.8, 1.2) * np.exp(-np.maximum(zbuf, 0) / 15) * np.exp(-lateral ** 2), 0)
    for x, y, z in w.lamps:
        d2 = (P[0] - x) ** 2 + (P[1] - y) ** 2 + (P[2] - z) ** 2
        light += np.where(seen, 1.4 * np.exp(-d2 / (2 * 3.0 ** 2)), 0)
    img = img * light[..., None] * np.array((1.0, 0.9, 0.75))  # sodium-lamp warm light
    if getattr(w, "windows", None) is not None and len(w.windows[0]):
        r, c, g = w.windows
        lit = g > 0.42  # a fixed share of the windows, by their glass hash
        img[r[lit], c[lit]] = np.array((255, 205, 130), np.float32) * u(0.6, 0.9)
    return img


def _rain_streaks(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Bright, thin, slanted, semi-transparent streaks (falling drops in the exposure)."""
    from PIL import ImageDraw

    h, wd = img.shape[:2]
    layer = Image.new("L", (wd, h))
    draw = ImageDraw.Draw(layer)
    slant, scale = rng.uniform(-0.35, 0.35), max(h, wd) / 256
    for _ in range(int(rng.integers(80, 160) * h * wd / 32768) + 1):
        x, y, length = rng.uniform(0, wd), rng.uniform(0, h), rng.uniform(6, 18) * scale
        draw.line([(x, y), (x + slant * length, y + length)], fill=int(rng.integers(120, 255)),
                  width=max(1, int(round(scale))))
    a = np.asarray(layer, np.float32)[..., None] / 255 * rng.uniform(0.25, 0.45)
    return img * (1 - a) + 215 * a


def render_one(rng: np.random.Generator, size: tuple[int, int], look: str = "game", instances: bool = False):
    """One scene: ((H, W, 3) uint8 image, (H, W) uint8 mask, (H, W) float32 depth in metres); ``look``
    is one of ``LOOKS`` or a condition of the photo look (``CONDITIONS``). ``instances``: also the
    (H, W) uint16 instance map (0 = none; see the module doc), as a fourth element."""
    if look not in LOOKS + CONDITIONS:
        raise ValueError(f"synscenes has looks {', '.join(LOOKS + CONDITIONS)}, not {look!r}")
    w, cam = _layout(rng, look)
    O, D, R, f, cx, cy = _rays(cam, *size)
    zbuf, obj, nrm = _cast(w, O, D, R, f, cx, cy)
    mask, depth = _labels(w, O, D, zbuf, obj)
    image = _shade(w, rng, O, D, zbuf, obj, nrm, mask)
    if not instances:
        return image, mask, depth
    inst = np.array([0] + w.inst, np.uint16)[np.maximum(obj, 0)]  # ground and sky: 0
    return image, mask, depth, inst


def instance_boxes(mask: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Detection targets of one scene: (boxes (N, 4) float32 x1 y1 x2 y2 around the visible pixels
    of each instance, classes (N,) int64 as Cityscapes ids of ``CLASSES``), in instance order;
    hidden instances and slivers (:func:`edgeda.data.boxes.instance_boxes`) are left out."""
    from .boxes import instance_boxes as boxes_of

    ids, boxes = boxes_of(instances)
    if not len(ids):
        return boxes, np.zeros(0, np.int64)
    lut = np.zeros(int(instances.max()) + 1, np.int64)
    lut[instances.ravel()] = mask.ravel()  # every pixel of an instance carries its class
    return boxes, lut[ids]


def render(n: int, seed: int, size: tuple[int, int] = (128, 256), look: str = "game", channels: int = 3,
           instances: bool = False):
    """``n`` scenes: images (n, H, W, channels) uint8, masks (n, H, W) uint8, depth (n, H, W) float32;
    scene ``i`` depends only on (``seed``, ``i``, ``size``, ``look``). ``instances``: also the
    instance maps (n, H, W) uint16, as a fourth element (the other three are unchanged)."""
    images = np.empty((n, *size, channels), np.uint8)
    masks = np.empty((n, *size), np.uint8)
    depth = np.empty((n, *size), np.float32)
    inst = np.empty((n, *size), np.uint16) if instances else None
    for i in range(n):
        out = render_one(np.random.default_rng((seed, i)), size, look, instances)
        img, masks[i], depth[i] = out[:3]
        if instances:
            inst[i] = out[3]
        images[i] = convert_channels(img, channels)
    return (images, masks, depth, inst) if instances else (images, masks, depth)
