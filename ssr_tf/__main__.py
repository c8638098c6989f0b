import sys

from ssr_tf.cli import main

sys.exit(main())
