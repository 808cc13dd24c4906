"""Top-down raster of a PointMaze (walls, goal, point) with numpy only, for rollout videos."""

from __future__ import annotations

from typing import Any

import numpy as np

PIXELS_PER_CELL = 32


def xy_to_pixel(maze: Any, xy: np.ndarray, pixels_per_cell: int = PIXELS_PER_CELL) -> np.ndarray:
    """Maze (x, y) coordinates -> (column, row) pixel coordinates of the raster."""
    scale = pixels_per_cell / maze.maze_size_scaling
    return np.stack([(xy[..., 0] + maze.x_map_center) * scale, (maze.y_map_center - xy[..., 1]) * scale], -1)


def draw_maze(sim: Any, position: np.ndarray, pixels_per_cell: int = PIXELS_PER_CELL) -> np.ndarray:
    maze = sim.maze
    grid = np.asarray(maze.maze_map) == 1
    image = np.where(np.kron(grid, np.ones((pixels_per_cell, pixels_per_cell), bool))[..., None], 60, 235)
    image = np.repeat(image, 3, axis=2).astype(np.uint8)
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    for xy, radius, colour in ((sim.goal, 0.45, (120, 200, 120)), (position, 0.12, (40, 80, 200))):
        col, row = xy_to_pixel(maze, np.asarray(xy, dtype=float), pixels_per_cell)
        r = radius * pixels_per_cell / maze.maze_size_scaling
        image[(cols - col) ** 2 + (rows - row) ** 2 <= r * r] = colour
    return image


def draw_plan(sim: Any, position: np.ndarray, plan_xy: np.ndarray, pixels_per_cell: int = 96) -> np.ndarray:
    """The maze with a planned path (N, 2) drawn over it, from orange (start) to red (end)."""
    image = draw_maze(sim, position, pixels_per_cell)
    maze = sim.maze
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    radius = 0.04 * pixels_per_cell / maze.maze_size_scaling
    for i, xy in enumerate(np.asarray(plan_xy, dtype=float)):
        col, row = xy_to_pixel(maze, xy, pixels_per_cell)
        shade = i / max(1, len(plan_xy) - 1)
        image[(cols - col) ** 2 + (rows - row) ** 2 <= radius * radius] = (230, int(160 * (1 - shade)), 40)
    return image
