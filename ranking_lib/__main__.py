from ranking_lib.cli import main

raise SystemExit(main())
