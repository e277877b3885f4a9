"""Fleet evaluation: many recordings through the offline cores in parallel on Ray (``flow-anomaly fleet``).

Layout (Ray is imported only by :mod:`.engine`, never by the nodes or at ``--help``):

- :mod:`.inputs`: which bags (paths, a directory searched for rosbag2 bags, a manifest with vehicle/drive ids)
  and the fingerprints that key the stored results (bag hash, models hash);
- :mod:`.bag_eval`: the per-bag function, ROS-free and Ray-free: ``flow-anomaly evaluate``'s ``evaluate_offline``
  on labelled bags, ``ts score``'s ``score_bag`` (plus the camera node's ``FrameProcessor``) on every bag; alarm
  events, alarms per hour / km, time per window status;
- :mod:`.engine`: one Ray task per bag, models in the object store once, results stored atomically per bag
  (resumable), progress bar;
- :mod:`.report`: per-bag rows, per-vehicle and fleet totals, events CSV/JSON, HTML page with PNG plots.
"""
