"""Scripted, simulator-backed expert demonstrator for gym_pusht's Push-T."""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import numpy as np
import pymunk
from gym_pusht.envs.pusht import PushTEnv

_DT, _SUBSTEPS, _KP, _KV = 0.01, 10, 100.0, 20.0  # must match PushTEnv (100 Hz physics, 10 Hz control)
_CTRL_DT = _DT * _SUBSTEPS
_R = 15.0  # agent disk radius
_GOAL = np.array([256.0, 256.0, math.pi / 4])
# The T in block-local coordinates (world = block.position + R(angle) @ local), see PushTEnv.add_tee.
_RECTS = np.array([[-60.0, 0.0, 60.0, 30.0], [-15.0, 30.0, 15.0, 120.0]])
_VERTS = np.array([[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]], float)
_NORMALS = np.array([[0, -1], [1, 0], [0, 1], [1, 0], [0, 1], [-1, 0], [0, 1], [-1, 0]], float)  # edge i->i+1
_CORNERS = _VERTS[[0, 1, 2, 4, 5, 7]]  # convex corners, used as detour waypoints
_CORNER_DIRS = np.array([[-1, -1], [1, -1], [1, 1], [1, 1], [-1, 1], [-1, 1]], float)


def _rot(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s], [s, c]])


def _to_world(pose: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ _rot(pose[2]).T + pose[:2]


def _to_local(pose: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return (pts - pose[:2]) @ _rot(pose[2])


_COG = np.array([0.0, 45.0])
_RHO = float(np.sqrt(np.mean(np.sum((_VERTS - _COG) ** 2, axis=1))))  # RMS vertex radius about the COG


def pose_error(pose: np.ndarray, ref: np.ndarray = _GOAL) -> float:
    """Pose distance (px): COG offset combined with RHO * |wrapped angle difference|. For small errors this
    matches the RMS vertex displacement; linear in angle so that rotating a flipped T shows progress."""
    dc = _to_world(pose, _COG) - _to_world(ref, _COG)
    da = (pose[2] - ref[2] + math.pi) % (2 * math.pi) - math.pi
    return math.sqrt(dc[0] ** 2 + dc[1] ** 2 + (_RHO * da) ** 2)


def _clearance(pose: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance from world points (..., 2) to the T (0 inside)."""
    q = _to_local(pose, pts)[..., None, :]
    dx = np.maximum(np.maximum(_RECTS[:, 0] - q[..., 0], q[..., 0] - _RECTS[:, 2]), 0.0)
    dy = np.maximum(np.maximum(_RECTS[:, 1] - q[..., 1], q[..., 1] - _RECTS[:, 3]), 0.0)
    return np.hypot(dx, dy).min(axis=-1)


def _segments_clear(pose: np.ndarray, a: np.ndarray, b: np.ndarray, clr: float) -> np.ndarray:
    """Whether each segment a[i]->b[i] keeps the agent centre at least `clr` away from the T."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    n = int(np.max(np.linalg.norm(b - a, axis=1), initial=0.0) / 3.0) + 2
    t = np.linspace(0.0, 1.0, n)[None, :, None]
    return (_clearance(pose, a[:, None] + t * (b - a)[:, None]) >= clr).all(axis=1)


def _profile(pts: np.ndarray, vlims: np.ndarray, amax: float) -> np.ndarray:
    """Time-parametrize a polyline rest-to-rest with per-segment speed limits, corner slow-downs and an
    acceleration limit, sampled at the control rate: the agent target then moves smoothly."""
    seg = np.diff(pts, axis=0)
    length = np.linalg.norm(seg, axis=1)
    keep = length > 1e-6
    if not keep.any():
        return pts[-1:].copy()
    pts = np.vstack([pts[:1], pts[1:][keep]])
    seg, length, vlims = seg[keep], length[keep], np.asarray(vlims, float)[keep]
    cum = np.concatenate([[0.0], np.cumsum(length)])
    s = np.linspace(0.0, cum[-1], max(int(cum[-1] / 0.5), 2) + 1)
    v2 = np.minimum(2 * amax * s, 2 * amax * (cum[-1] - s))
    for j in range(len(length)):
        dist = np.maximum(np.maximum(cum[j] - s, s - cum[j + 1]), 0.0)
        v2 = np.minimum(v2, vlims[j] ** 2 + 2 * amax * dist)
    u = seg / length[:, None]
    for i in range(1, len(length)):
        half_turn = 0.5 * math.acos(float(np.clip(u[i - 1] @ u[i], -1.0, 1.0)))
        vc = amax * _CTRL_DT / max(2 * math.sin(half_turn), 1e-6)
        v2 = np.minimum(v2, vc**2 + 2 * amax * np.maximum(np.abs(s - cum[i]) - 1.5 * vc * _CTRL_DT, 0.0))
    v = np.sqrt(np.maximum(v2, 0.0))
    t = np.concatenate([[0.0], np.cumsum(np.diff(s) / np.maximum(0.5 * (v[1:] + v[:-1]), 1e-3))])
    tk = np.arange(1, max(1, math.ceil(t[-1] / _CTRL_DT - 1e-6)) + 1) * _CTRL_DT
    sk = np.interp(tk, t, s)
    return np.stack([np.interp(sk, cum, pts[:, 0]), np.interp(sk, cum, pts[:, 1])], axis=1)


class _Sim:
    """Private pymunk copy of the Push-T world (same builders as PushTEnv, no callbacks), used to
    predict pushes without touching the live env."""

    def __init__(self) -> None:
        self.space = pymunk.Space()
        self.space.gravity = 0, 0
        self.space.damping = 0.0
        walls = [((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506))]
        self.space.add(*[PushTEnv.add_segment(self.space, a, b, 2) for a, b in walls])
        self.agent = PushTEnv.add_circle(self.space, (256, 400), 15)
        self.block, _ = PushTEnv.add_tee(self.space, (256, 300), 0)

    def load(self, state: tuple) -> None:
        """state = (agent_pos, agent_vel, block_pos, block_angle, block_vel, block_angvel)."""
        ap, av, bp, ba, bv, bw = state
        self.agent.position, self.agent.velocity = tuple(ap), tuple(av)
        self.block.angle = ba  # angle before position: the position setter depends on the rotation
        self.block.position = tuple(bp)
        self.block.velocity, self.block.angular_velocity = tuple(bv), bw

    def step(self, tx: float, ty: float) -> np.ndarray:
        """One 10 Hz control step toward target (tx, ty) with the env's PD law; returns the block pose."""
        agent, space = self.agent, self.space
        vx, vy = agent.velocity
        for _ in range(_SUBSTEPS):
            px, py = agent.position
            vx += (_KP * (tx - px) - _KV * vx) * _DT
            vy += (_KP * (ty - py) - _KV * vy) * _DT
            agent.velocity = (vx, vy)
            space.step(_DT)
        bx, by = self.block.position
        return np.array([bx, by, self.block.angle])


def _gym_pusht(env: gymnasium.Env) -> Any:
    """The gym_pusht env behind a dpstack task env (`env.sim`) or a gymnasium wrapper stack."""
    return getattr(env, "sim", env).unwrapped


def read_state(env: gymnasium.Env) -> tuple:
    """Snapshot of everything the physics depends on (read-only access to the gym_pusht env)."""
    u = _gym_pusht(env)
    return (
        tuple(u.agent.position),
        tuple(u.agent.velocity),
        tuple(u.block.position),
        float(u.block.angle),
        tuple(u.block.velocity),
        float(u.block.angular_velocity),
    )


class PushTExpert:
    """Scripted Push-T expert that plans one straight push at a time using a private simulator copy.

    Each plan: sample contact points on the T's edges with push directions near the inward normal (denser
    and slower as the pose error shrinks), roll each push out in the private sim to find its best stopping
    point, score by log error reduction plus a time cost (approach detour around the T + push), then
    re-simulate the top few complete plans (detour approach + push + settle) from the exact current state
    and execute the best. Approaches route around the T via offset convex corners and all targets follow
    speed/acceleration-limited profiles. Randomness (speeds, margins, candidate subsets, near-tie choices)
    comes from `rng`, so demos differ; `noise` adds Gaussian target noise (px) and `p_suboptimal` sometimes
    picks a worse push, for deliberately weaker datasets. Stops acting once coverage >= `stop_coverage`.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        noise: float = 0.0,
        p_suboptimal: float = 0.0,
        stop_coverage: float = 0.97,
    ) -> None:
        self.rng, self.noise, self.p_suboptimal, self.stop_coverage = rng, noise, p_suboptimal, stop_coverage
        self.sim = _Sim()
        self.plan: list[np.ndarray] = []
        self.pred: list[np.ndarray] = []
        self.target = np.full(2, 256.0)
        self.done = False
        self.expect: np.ndarray | None = None  # predicted block pose after the last returned action

    def reset(self, env: gymnasium.Env) -> None:
        """Start a new episode; env is a dpstack Push-T env or a gym_pusht env, right after reset(seed=...)."""
        self.plan, self.pred, self.done, self.expect = [], [], False, None
        self.target = np.array(_gym_pusht(env).agent.position, float)
        r = self.rng
        self.v_app, self.a_max = r.uniform(160.0, 280.0), r.uniform(700.0, 1200.0)
        self.margin, self.time_cost = r.uniform(8.0, 16.0), r.uniform(0.08, 0.14)

    def act(self, env: gymnasium.Env) -> np.ndarray:
        """Next action: float32 array (2,), the agent target in [0, 512]^2, read from env's current simulator state."""
        u = _gym_pusht(env)
        pose = np.array([*u.block.position, u.block.angle])
        cov = u._get_coverage()
        if cov >= self.stop_coverage or (self.done and cov >= 0.95):  # finished (with margin): hold still
            self.done, self.plan, self.pred = True, [], []
        else:
            self.done = False
        if not self.done:
            tol = 2.0 + self.noise
            if self.expect is not None and pose_error(pose, self.expect) > tol:
                self.plan, self.pred = [], []  # reality drifted from the prediction: replan from here
            if not self.plan:
                self._make_plan(read_state(env), pose)
        if self.plan:
            self.target, self.expect = self.plan.pop(0), self.pred.pop(0)
        else:
            self.expect = None
        out = self.target + (self.rng.normal(0.0, self.noise, 2) if self.noise > 0 else 0.0)
        return np.clip(out, 0.0, 512.0).astype(np.float32)

    # ---------------------------------------------------------------- planning
    def _make_plan(self, state: tuple, pose: np.ndarray) -> None:
        e0, rng = pose_error(pose), self.rng
        if e0 > 30:
            spacing, angles, v_push, kmax = 22.0, (0.0, 0.45, -0.45), rng.uniform(70, 140), 25
        elif e0 > 8:
            spacing, angles, v_push, kmax = 12.0, (0.0, 0.3, -0.3, 0.6, -0.6), rng.uniform(35, 70), 15
        else:
            spacing, angles, v_push, kmax = 7.0, (0.0, 0.25, -0.25, 0.5, -0.5), rng.uniform(15, 35), 10
        gap = rng.uniform(8.0, 14.0)
        cands = []
        for i in range(8):
            p, q = _VERTS[i], _VERTS[(i + 1) % 8]
            n = max(1, round(np.linalg.norm(q - p) / spacing))
            for t in (np.arange(n) + 0.5 + rng.uniform(-0.3, 0.3, n)) / n:
                for a in angles:
                    d = _rot(a + rng.normal(0, 0.05)) @ -_NORMALS[i]
                    cands.append((p + t * (q - p) + _R * _NORMALS[i] - gap * d, d))
        rng.shuffle(cands)
        cands = cands[:90]
        rot = _rot(pose[2])
        starts = np.array([c[0] for c in cands]) @ rot.T + pose[:2]
        dirs = np.array([c[1] for c in cands]) @ rot.T
        ok = (_clearance(pose, starts) > _R + 1.5) & (starts.min(axis=1) > 2) & (starts.max(axis=1) < 510)
        route = _Router(pose, self.target, state[0], self.margin)
        scored = []
        for st, d in zip(starts[ok], dirs[ok], strict=True):
            res = self._rollout(state, pose, st, d, v_push, kmax, gap, e0)
            if res is None:
                continue
            err, s_end = res
            dist = route.distance(st)
            if dist is None:
                continue
            t_est = dist / (0.7 * self.v_app) + s_end / v_push + 0.5
            score = math.log(max(err, 0.3) / e0) + self.time_cost * t_est
            scored.append((score + rng.normal(0, 0.04), st, st + d * s_end, v_push))
        if not scored:  # nothing reachable/improving: drift a little (smoothly) and plan again
            goal = np.clip(self.target + _rot(rng.uniform(0, 2 * math.pi)) @ [25.0, 0.0], 20.0, 492.0)
            self.plan = list(_profile(np.stack([self.target, goal]), np.array([80.0]), self.a_max))
            self.pred = [pose] * len(self.plan)
            return
        scored.sort(key=lambda c: c[0])
        pick = scored[:4]  # verify the top few as complete plans from the exact current state
        if rng.random() < self.p_suboptimal:  # deliberate imperfection: a random push from the worse half
            pick = [scored[rng.integers(len(scored) // 2, len(scored))]]
        best = None
        for _, st, end, vp in pick:
            path = route.path(st)
            targets = _profile(np.vstack([path, end]), np.r_[np.full(len(path) - 1, self.v_app), vp], self.a_max)
            targets = np.vstack([targets, np.repeat(targets[-1:], 2, axis=0)]).astype(np.float32).astype(float)
            self.sim.load(state)
            poses = [self.sim.step(*tg) for tg in targets]
            score = math.log(max(pose_error(poses[-1]), 0.3) / e0) + self.time_cost * len(targets) * _CTRL_DT
            if best is None or score < best[0]:
                best = (score, list(targets), poses)
        self.plan, self.pred = best[1], best[2]

    def _rollout(
        self,
        state: tuple,
        pose: np.ndarray,
        start: np.ndarray,
        d: np.ndarray,
        v: float,
        kmax: int,
        gap: float,
        e0: float,
    ) -> tuple[float, float] | None:
        """Push from rest at `start` along `d`; returns (best error, push length) or None if useless."""
        sim = self.sim
        sim.load(((start[0], start[1]), (0.0, 0.0), *state[2:]))
        t_acc = v / self.a_max
        k_contact = math.ceil((t_acc + (gap + 4.0) / v) / _CTRL_DT) + 1
        best, s_best = e0, 0.0
        for k in range(1, kmax + 1):
            t = k * _CTRL_DT
            s = 0.5 * self.a_max * t * t if t < t_acc else v * (t - 0.5 * t_acc)
            p = sim.step(start[0] + d[0] * s, start[1] + d[1] * s)
            err = pose_error(p)
            if err < best:
                ax, ay = sim.agent.position
                best, s_best = err, float((ax - start[0]) * d[0] + (ay - start[1]) * d[1])
            elif k > k_contact and (best >= e0 or err > best + max(2.0, 0.25 * best)):
                break
        return (best, s_best) if best < e0 else None


class _Router:
    """Shortest collision-free route for the agent around the T (visibility graph over offset convex corners)."""

    def __init__(self, pose: np.ndarray, target: np.ndarray, agent: tuple, margin: float) -> None:
        self.pose, self.clr = pose, _R + 3.0
        c = _R + margin
        nodes = _to_world(pose, _CORNERS + c * _CORNER_DIRS)
        self.nodes = nodes[(nodes.min(axis=1) > 0) & (nodes.max(axis=1) < 512)]
        self.head = [np.asarray(target, float)]
        src, agent = self.head[0], np.asarray(agent, float)
        if _clearance(pose, np.stack([src, agent])).min() < self.clr:  # in contact: back off from the T first
            q = _to_local(pose, agent[None])[0]
            out = np.zeros(2)
            for x0, y0, x1, y1 in _RECTS:
                near = np.clip(q, [x0, y0], [x1, y1])
                if np.linalg.norm(q - near) < c:
                    out += (q - near) / max(np.linalg.norm(q - near), 1e-6)
            src = _to_world(pose, (q + c * out / max(np.linalg.norm(out), 1e-6))[None])[0]
            self.head.append(src)
        self.src = src
        m = len(self.nodes)
        ii, jj = np.triu_indices(m, 1)
        adj = np.full((m, m), np.inf)
        free = _segments_clear(pose, self.nodes[ii], self.nodes[jj], self.clr)
        w = np.linalg.norm(self.nodes[ii] - self.nodes[jj], axis=1)
        adj[ii[free], jj[free]] = adj[jj[free], ii[free]] = w[free]
        self.dist = np.where(
            _segments_clear(pose, np.repeat(src[None], m, 0), self.nodes, self.clr),
            np.linalg.norm(self.nodes - src, axis=1),
            np.inf,
        )
        self.prev = np.full(m, -1)
        done = np.zeros(m, bool)
        for _ in range(m):  # Dijkstra on <= 6 nodes
            i = int(np.argmin(np.where(done, np.inf, self.dist)))
            if not np.isfinite(self.dist[i]):
                break
            done[i] = True
            better = self.dist[i] + adj[i] < self.dist
            self.dist[better], self.prev[better] = self.dist[i] + adj[i][better], i
        self.base = sum(np.linalg.norm(b - a) for a, b in zip(self.head, self.head[1:], strict=False))

    def _last_hop(self, goal: np.ndarray) -> tuple[float, int]:
        """Cost and predecessor node (-1: straight from src) of the final hop into the pre-push point."""
        pts = np.vstack([self.src, self.nodes])
        vec = goal - pts
        ln = np.linalg.norm(vec, axis=1)
        near = goal - vec / np.maximum(ln, 1e-6)[:, None] * np.minimum(ln, 12.0)[:, None]
        ok = _segments_clear(self.pose, pts, near, self.clr)
        tot = np.where(ok, np.r_[0.0, self.dist] + ln, np.inf)
        i = int(np.argmin(tot))
        return (float(tot[i]), i - 1) if np.isfinite(tot[i]) else (math.inf, -2)

    def distance(self, goal: np.ndarray) -> float | None:
        d, _ = self._last_hop(goal)
        return None if not np.isfinite(d) else d + self.base

    def path(self, goal: np.ndarray) -> np.ndarray:
        _, i = self._last_hop(goal)
        mid = []
        while i >= 0:
            mid.append(self.nodes[i])
            i = self.prev[i]
        return np.vstack([*self.head, *mid[::-1], goal])
