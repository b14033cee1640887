"""accel_ros: Accel (Jain, Wang, Gonzalez, CVPR 2019) video semantic segmentation for ROS 2."""

__version__ = "0.1.0"
