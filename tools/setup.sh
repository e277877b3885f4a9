#!/usr/bin/env bash
# make setup: build the development/CI environment in .venv from nothing, idempotently.
#  - installs missing system packages (cmake, g++, python3 venv support) with apt-get
#  - creates .venv with Python 3.11 and installs the pinned requirements (ROS 2 Kilted wheels, torch, ...)
#  - fixes the Kilted wheels' hard-coded manylinux include paths so rosidl builds work
#  - builds msg/*.msg (and can_msgs/Frame for machines without ros2_socketcan) into the venv prefix
#  - installs the vendored upstream launch/launch_ros (../shared/vendor, test dependency) and builds the
#    composition_interfaces services launch_ros imports, so tests run the launch files under a real LaunchService
#  - installs flow_anomaly_ros in editable mode
# A re-run with nothing changed returns in about a second (content hash stamp).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
STAMP=$VENV/.setup-stamp
PY=${PYTHON:-python3.11}

inputs=(requirements-dev.txt constraints.txt setup.py pyproject.toml CMakeLists.txt package.xml msg/*.msg
        tools/can_msgs/msg/*.msg tools/can_msgs/CMakeLists.txt tools/composition_interfaces/srv/*.srv
        tools/composition_interfaces/CMakeLists.txt tools/setup.sh)
hash=$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && $(cat "$STAMP") == "$hash" && -x $VENV/bin/python ]]; then
  echo "setup: .venv is up to date"
  exit 0
fi

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
command -v make >/dev/null || need_apt+=(make)
command -v "$PY" >/dev/null || need_apt+=(python3 python3-venv python3-dev)
if ((${#need_apt[@]})); then
  echo "setup: installing system packages: ${need_apt[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "setup: Python 3.11 is required (set PYTHON=/path/to/python3.11)"; exit 1; }

[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
touch "$VENV/COLCON_IGNORE"   # the venv holds package.xml files of every ROS package: keep colcon out
"$VENV/bin/python" -m pip install -q --upgrade 'pip>=24' 'setuptools<80' wheel
echo "setup: installing pinned requirements (first run: a few minutes; torch comes from local disk where available)"
"$VENV/bin/python" -m pip install -q -r requirements-dev.txt -c constraints.txt

# The Kilted wheels' CMake exports name the manylinux build paths of Python and numpy headers.
PYINC=$("$VENV/bin/python" -c "import sysconfig;print(sysconfig.get_paths()['include'])")
NPINC=$("$VENV/bin/python" -c "import numpy;print(numpy.get_include())")
sed -i -e "s|/opt/python/cp311-cp311/include/python3.11|$PYINC|g" \
       -e "s|/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include|$NPINC|g" \
       "$VENV"/share/*/cmake/*__rosidl_generator_pyExport.cmake

export PATH=$VENV/bin:$PATH CMAKE_PREFIX_PATH=$VENV AMENT_PREFIX_PATH=$VENV
build_msgs() {  # $1 = source dir, $2 = build dir name, extra cmake args...
  local src=$1 name=$2; shift 2
  cmake -S "$src" -B "$VENV/build/$name" -DCMAKE_INSTALL_PREFIX="$VENV" -DBUILD_TESTING=OFF \
        -DPython3_EXECUTABLE="$VENV/bin/python" "$@" >"$VENV/build/$name.log" 2>&1 \
    && cmake --build "$VENV/build/$name" -j"$(nproc)" >>"$VENV/build/$name.log" 2>&1 \
    && cmake --install "$VENV/build/$name" >>"$VENV/build/$name.log" 2>&1 \
    || { echo "setup: building $name failed, log: $VENV/build/$name.log"; tail -30 "$VENV/build/$name.log"; exit 1; }
}
mkdir -p "$VENV/build"
echo "setup: building messages (can_msgs, flow_anomaly_ros)"
if ! "$VENV/bin/python" -c "import can_msgs.msg" 2>/dev/null; then build_msgs tools/can_msgs can_msgs; fi
srv_changed() {  # the installed composition_interfaces was built from other .srv files than tools/ has now
  local f; for f in tools/composition_interfaces/srv/*.srv; do
    cmp -s "$f" "$VENV/share/composition_interfaces/srv/$(basename "$f")" || return 0
  done; return 1
}
if ! "$VENV/bin/python" -c "import composition_interfaces.srv" 2>/dev/null || srv_changed; then
  build_msgs tools/composition_interfaces composition_interfaces
fi
build_msgs . flow_anomaly_ros -DFLOW_ANOMALY_INSTALL_PYTHON=OFF

# launch, launch_xml, launch_yaml and launch_ros are not on PyPI: install the unmodified upstream exports from
# ../shared/vendor (never copied into the project). pip builds in the source tree, so build from a scratch copy.
VENDOR=${FLOW_ANOMALY_VENDOR:-$ROOT/../shared/vendor}
if [[ -d $VENDOR/ros2-launch && -d $VENDOR/ros2-launch_ros ]]; then
  echo "setup: installing launch/launch_ros from $VENDOR"
  scratch=$(mktemp -d)
  cp -r "$VENDOR"/ros2-launch/{launch,launch_xml,launch_yaml} "$VENDOR/ros2-launch_ros/launch_ros" "$scratch/"
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation \
    "$scratch/launch" "$scratch/launch_xml" "$scratch/launch_yaml" "$scratch/launch_ros" >"$VENV/build/launch.log" 2>&1 \
    || { echo "setup: installing launch failed, log: $VENV/build/launch.log"; tail -30 "$VENV/build/launch.log"; exit 1; }
  rm -rf "$scratch"
else
  echo "setup: $VENDOR has no ros2-launch/ros2-launch_ros: launch tests will be skipped"
fi
# rosidl writes a package __init__.py next to the generated msg/ directory; in the venv the hand-written package
# (editable install) must own `flow_anomaly_ros`, and it joins the generated part with pkgutil.extend_path.
SITE=$("$VENV/bin/python" -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")
# Its egg-info carries the same distribution name as the editable install: pip would "uninstall" the generated
# modules along with it, so drop it (the generated files stay, owned by this build).
rm -rf "$SITE"/flow_anomaly_ros-*.egg-info "$SITE/flow_anomaly_ros/__init__.py"
rm -rf "$SITE/flow_anomaly_ros/__pycache__"

"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
"$VENV/bin/python" -c "import rclpy, flow_anomaly_ros, can_msgs.msg; from flow_anomaly_ros.msg import AnomalyScore, ImageAnomaly"
echo "$hash" >"$STAMP"
echo "setup: done ($VENV)"
