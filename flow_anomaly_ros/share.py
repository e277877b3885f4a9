"""Where the package's data directories (``config/``, ``models/``) are: the colcon-installed share, else the source.

A colcon install puts them under ``share/flow_anomaly_ros`` (CMakeLists.txt), found through the ament index; a
source checkout or an editable pip install has them next to the package. Every default path (``ts train``'s config,
the demo's training config, the runner's parameter files, the shipped base model) comes from :func:`share_dir`, so
an installed tree finds the same files the source tree does. ``ament_index_python`` is plain Python and imported
lazily; without it (a bare pip install) the source layout is used.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = "flow_anomaly_ros"
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout (or the directory above site-packages' package)


def installed_share() -> Path | None:
    """``share/flow_anomaly_ros`` of the colcon install the ament index knows, or None."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(PACKAGE))
    except (PackageNotFoundError, ValueError, LookupError, OSError):  # OSError: AMENT_PREFIX_PATH unset
        return None


def share_dir(name: str) -> Path:
    """The package's ``name`` directory (``config``, ``models``): the installed share's if it has one, else the
    source tree's (which may not exist; callers report the missing file)."""
    share = installed_share()
    if share is not None and (share / name).is_dir():
        return share / name
    return SOURCE_ROOT / name


def config_dir() -> Path:
    """The package's ``config/`` directory (default parameter files and the training config)."""
    return share_dir("config")
