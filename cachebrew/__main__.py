from cachebrew.cli import main

main()
