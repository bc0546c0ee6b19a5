"""Vessels outside the organs: aorta with iliac arteries, IVC, and the portal system (portal,
splenic and superior mesenteric veins, superior mesenteric artery). All are force-painted, so the
organs wrap around them. Renal veins are placed with the kidneys and intrahepatic vessels with the
liver."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from flare_seg.training.phantom.canvas import constant_part
from flare_seg.training.phantom.shapes import Tube, VerticalTube

if TYPE_CHECKING:
    from flare_seg.training.phantom.anatomy import AnatomyBuilder


def add_great_vessels(b: AnatomyBuilder) -> None:
    """Aorta (left-anterior of the spine, beside it in the chest) with iliac arteries; IVC."""
    spine, hu = b.spine, b.hu
    b.bifurcation_z = b.crest_z + b.u(-10, 10)
    b.r_aorta = r = b.u(9, 12)
    b.x_aorta = x0 = b.u(8, 18)
    z = np.array(
        [
            b.bifurcation_z,
            b.l1_z - b.pitch,
            b.l1_z,
            b.l1_z + 60,
            -40.0,
            20,
            80,
            200,
            b.top_z,
        ]
    )
    rx, ry = spine.radii(z)
    cy = spine.center_y(z)
    chest = np.clip((z + 40.0) / 80.0, 0.0, 1.0)
    y = (cy - ry - r - b.u(1, 4)) * (1 - chest) + (cy - r * 0.3) * chest
    x = x0 * (1 - chest) + (rx + r * 0.8) * chest
    b.aorta_z, b.aorta_y = z, y
    b.force.append(constant_part("aorta", VerticalTube(z, x, y, r * (1.0 + 0.15 * chest)), hu["artery"]))
    curves, radii = [], []
    y_bif = b.aorta_y_at(b.bifurcation_z)
    for side in (-1, 1):
        p0 = np.array([x0, y_bif, b.bifurcation_z + 5])
        p1 = np.array([side * b.u(40, 55), y_bif + 5, b.bifurcation_z - 80])
        p2 = np.array([side * b.cav_a * b.u(0.55, 0.65), y_bif - 25, b.bifurcation_z - 170])
        curves.append(np.stack([p0, p1, p2]))
        radii.append(np.array([r * 0.7, r * 0.6, r * 0.55]))
    b.force.append(constant_part("iliac_arteries", Tube(curves, radii), hu["artery"]))

    r_ivc = b.u(10, 13)
    b.x_ivc = b.u(-28, -18)
    z = np.array([b.bifurcation_z - 10, b.l1_z - b.pitch, b.l1_z, -110.0, -60.0, -10.0, 40.0])
    _, ry = spine.radii(z)
    forward = np.where((z > -115) & (z < 5), b.u(5, 15), 0.0)  # into the liver's IVC groove
    b.ivc_z, b.ivc_y = z, spine.center_y(z) - ry * 0.6 - r_ivc - forward
    ivc = VerticalTube(z, np.full(len(z), b.x_ivc), b.ivc_y, r_ivc * 1.25, r_ivc)
    b.force.append(constant_part("ivc", ivc, hu["vein"]))


def add_portal_system(b: AnatomyBuilder) -> None:
    """Portal vein (confluence to liver hilum), splenic vein, SMV and SMA: all force-painted, so
    the pancreas and liver wrap around them."""
    hu, c = b.hu, b.confluence
    portal = Tube(
        [np.stack([c, 0.5 * (c + b.liver_hilum) + np.array([0, -5.0, 0]), b.liver_hilum])],
        [np.full(3, b.u(6, 8))],
    )
    b.force.append(constant_part("portal_vein", portal, hu["portal_vein"]))
    splenic = Tube([b.splenic_curve], [np.full(len(b.splenic_curve), b.r_splenic)])
    b.force.append(constant_part("splenic_vein", splenic, hu["portal_vein"]))
    smv = Tube(
        [np.stack([c, c + np.array([-3.0, -8.0, -40.0]), c + np.array([-8.0, -12.0, -90.0])])],
        [np.full(3, b.u(4.5, 6.0))],
    )
    b.force.append(constant_part("smv", smv, hu["portal_vein"]))
    z = b.z_pancreas - 8
    origin = np.array([b.x_aorta, b.aorta_y_at(z) - b.r_aorta + 2, z])
    sma = Tube(
        [np.stack([origin, origin + np.array([2.0, -15.0, -10.0]), origin + np.array([6.0, -20.0, -90.0])])],
        [np.full(3, b.u(3, 4))],
    )
    b.force.append(constant_part("sma", sma, hu["artery"]))
