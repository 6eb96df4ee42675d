"""What the command line does besides running the bridge: first run and `-g` (setup), and the
logging it sets up (logs)."""
