from avito_ai.cli import main

main()
