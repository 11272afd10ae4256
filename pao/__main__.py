from pao.cli import main

raise SystemExit(main())
