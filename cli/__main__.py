from medge.main import main

main()
