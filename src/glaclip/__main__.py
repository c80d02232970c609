from glaclip.cli.main import main

raise SystemExit(main())
