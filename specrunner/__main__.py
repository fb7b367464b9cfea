from specrunner.cli import main

raise SystemExit(main())
