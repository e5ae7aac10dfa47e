from mucosa.cli import main

raise SystemExit(main())
