"""PointMaze expert: D4RL's Maze2D waypoint controller.

Q-iteration on the maze grid (4-connected free cells, reward 1 at the goal cell, gamma 0.99) gives a
value per cell; the next waypoint is the centre of the best neighbouring cell, shifted by a random
offset of up to 0.2 cell (intermediate waypoints only, drawn once per waypoint, so routes differ
between demonstrations); the final waypoint is the goal itself. A PD law tracks the waypoint:
action = clip(10 (waypoint - position) - 1 velocity, -1, 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_MOVES = ((1, 0), (-1, 0), (0, 1), (0, -1))


def cell_values(maze_map: np.ndarray, goal: tuple[int, int], gamma: float = 0.99, iters: int = 200) -> np.ndarray:
    """Value of every cell for reaching `goal` (walls get -inf), by value iteration on the grid."""
    free = maze_map == 0
    values = np.zeros(maze_map.shape)
    for _ in range(iters):
        padded = np.pad(np.where(free, values, -np.inf), 1, constant_values=-np.inf)
        best = np.max(
            [padded[1 + di : padded.shape[0] - 1 + di, 1 + dj : padded.shape[1] - 1 + dj] for di, dj in _MOVES],
            axis=0,
        )
        new = np.where(free, gamma * best, -np.inf)
        new[goal] = 1.0
        if np.allclose(np.nan_to_num(new, neginf=0), np.nan_to_num(values, neginf=0)):
            break
        values = new
    return values


class PointMazeExpert:
    """Waypoint controller; `noise` adds Gaussian action noise (std) for weaker datasets."""

    def __init__(
        self, rng: np.random.Generator, noise: float = 0.0, offset: float = 0.2, kp: float = 10.0, kd: float = 1.0
    ) -> None:
        self.rng = rng
        self.noise = noise
        self.offset = offset
        self.kp, self.kd = kp, kd

    def reset(self, env: Any) -> None:
        sim = env.sim
        self.maze = sim.maze
        self.grid = np.asarray(self.maze.maze_map, dtype=int)
        self.grid[self.grid != 1] = 0  # goal / reset markers are free cells
        self.goal = np.asarray(sim.goal, dtype=float).copy()
        self.goal_cell = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(self.goal))
        self.values = cell_values(self.grid, self.goal_cell)
        self.waypoint_cell: tuple[int, int] | None = None
        self.waypoint = self.goal

    def _next_cell(self, cell: tuple[int, int]) -> tuple[int, int]:
        options = [(cell[0] + di, cell[1] + dj) for di, dj in _MOVES]
        options = [c for c in options if 0 <= c[0] < self.grid.shape[0] and 0 <= c[1] < self.grid.shape[1]]
        return max(options, key=lambda c: self.values[c])

    def _set_waypoint(self, cell: tuple[int, int]) -> None:
        self.waypoint_cell = cell
        if cell == self.goal_cell:
            self.waypoint = self.goal
        else:
            jitter = self.rng.uniform(-self.offset, self.offset, 2) * self.maze.maze_size_scaling
            self.waypoint = np.asarray(self.maze.cell_rowcol_to_xy(np.array(cell)), dtype=float) + jitter

    def act(self, env: Any) -> np.ndarray:
        if not np.array_equal(env.sim.goal, self.goal):  # the env drew a new goal (reset_target=True)
            self.reset(env)
        data = env.sim.point_env.data
        pos, vel = data.qpos[:2].copy(), data.qvel[:2].copy()
        cell = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(pos))
        if cell == self.goal_cell:
            if self.waypoint_cell != self.goal_cell:
                self._set_waypoint(self.goal_cell)
        elif self.waypoint_cell is None or (
            cell == self.waypoint_cell and np.linalg.norm(self.waypoint - pos) < 0.25 * self.maze.maze_size_scaling
        ):
            self._set_waypoint(self._next_cell(cell))
        elif self.waypoint_cell != cell and self.values[self.waypoint_cell] <= self.values[cell]:
            self._set_waypoint(self._next_cell(cell))  # pushed off the route: re-plan from here
        action = self.kp * (self.waypoint - pos) - self.kd * vel
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, 2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
