import sys

from phase2_ray.cli import main

sys.exit(main())
