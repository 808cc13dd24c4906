"""ROS 2 (rclpy) policy node and simulator bridge."""
